/* The chaos run's delivery program; behaviour by argv[0]'s basename.
 * Reads the whole message, finds "Subject: chaos <seq>", appends "<name> <seq> <pid>\n"
 * to ./runs.log with one O_APPEND write (atomic), then:
 *   succ   exits 0
 *   fail   exits 1 (a bounce)
 *   defer  exits 75 (tempfail) unless ./defer.<seq> exists, which it creates: the
 *          retry succeeds
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    (void) argc;
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    static char buf[1 << 20];
    size_t len = 0;
    ssize_t n;
    while ((n = read(0, buf + len, sizeof buf - 1 - len)) > 0) {
        len += (size_t) n;
        if (len >= sizeof buf - 1) { char sink[65536]; while (read(0, sink, sizeof sink) > 0) {} break; }
    }
    buf[len] = 0;
    char seq[64] = "?";
    char *s = strstr(buf, "Subject: chaos ");
    if (s) sscanf(s + 15, "%63s", seq);
    char line[200];
    int m = snprintf(line, sizeof line, "%s %s %d\n", name, seq, (int) getpid());
    int fd = open("runs.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0 || write(fd, line, (size_t) m) != m) return 74;
    close(fd);
    if (!strcmp(name, "fail")) return 1;
    if (!strcmp(name, "defer")) {
        char marker[128];
        snprintf(marker, sizeof marker, "defer.%s", seq);
        int mfd = open(marker, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (mfd >= 0) { close(mfd); return 75; }
    }
    return 0;
}
