/* The trivial program every system under test runs (raw loop, Postfix pipe(8), mailexec).
 *
 * Reads stdin to EOF (64 KiB reads), then appends ONE line "<id> <ns>\n" to OUT_PATH
 * (compiled in: mailexec gives programs no arguments and only TZ/AGENT) with O_APPEND,
 * where <id> is the value of the message's "X-Bench-Id:" header ("-" if absent) and
 * <ns> is CLOCK_REALTIME at exit in nanoseconds. Writes nothing to stdout/stderr and
 * exits 0. The appended line is how the bench counts runs and measures latency; the
 * same binary is used for all three systems so their costs compare. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef OUT_PATH
#error "compile with -DOUT_PATH=\"/path/to/counter\""
#endif

static char buf[65536];
static char head[4096];

int main(void) {
    size_t hl = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (n == 0) break;
        if (hl < sizeof head - 1) {
            size_t c = (size_t)n < sizeof head - 1 - hl ? (size_t)n : sizeof head - 1 - hl;
            memcpy(head + hl, buf, c);
            hl += c;
        }
    }
    head[hl] = 0;
    char id[48] = "-";
    char *p = strstr(head, "X-Bench-Id: ");
    if (p) {
        p += 12;
        size_t i = 0;
        while (p[i] && p[i] != '\r' && p[i] != '\n' && i < sizeof id - 1) { id[i] = p[i]; i++; }
        id[i] = 0;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[96];
    int len = snprintf(line, sizeof line, "%s %lld\n", id,
                       (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    int fd = open(OUT_PATH, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t w = write(fd, line, (size_t)len);
        (void)w;
        close(fd);
    }
    return 0;
}
