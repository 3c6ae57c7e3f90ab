/* Test program for the executor's end-to-end tests; behaviour chosen by argv[0]'s basename.
 *
 * Every run appends "<name>\n" to ./order.log (cwd = the account's home).
 *   probe*   writes ./<name>.id (uid gid euid egid groups...), ./<name>.cwd, ./<name>.env
 *            (environ, one per line) and ./<name>.stdin (stdin, exactly), exits 0
 *   exit<N>  reads stdin, exits N
 *   say      reads stdin, writes "5.7.1 go away\nsecond line\n" to stdout, exits 0
 *   chatty   reads stdin, writes "hello\n" to stderr, exits 0
 *   sig      kills itself with SIGTERM
 *   sleeper  sleeps forever
 *   flaky    exits 75 the first time (no ./flaky.once yet), then 0
 *   early    exits 0 without reading stdin
 *   hostile  setuid(0) (result in ./hostile.setuid), 500 forks that sleep, 100 MB to
 *            stdout, then sleeps forever
 *   slowonce the first time (no ./slowonce.once yet) sleeps 20 s, then exits 0; later runs 0
 *   nap      reads stdin, sleeps 2 s, exits 0
 *   anything else (e.g. "true"): reads stdin to EOF, exits 0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static void drain(FILE *copy) {
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0)
        if (copy) fwrite(buf, 1, (size_t) n, copy);
}

static FILE *open_out(const char *name, const char *suffix, const char *mode) {
    char path[512];
    snprintf(path, sizeof path, "%s.%s", name, suffix);
    return fopen(path, mode);
}

int main(int argc, char **argv) {
    (void) argc;
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    FILE *log = fopen("order.log", "a");
    if (log) { fprintf(log, "%s\n", name); fclose(log); }

    if (strncmp(name, "probe", 5) == 0) {
        FILE *f = open_out(name, "id", "w");
        gid_t groups[64];
        int n = getgroups(64, groups);
        fprintf(f, "%d %d %d %d", (int) getuid(), (int) getgid(), (int) geteuid(), (int) getegid());
        for (int i = 0; i < n; i++) fprintf(f, " %d", (int) groups[i]);
        fprintf(f, "\n");
        fclose(f);
        char cwd[4096];
        f = open_out(name, "cwd", "w");
        fprintf(f, "%s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
        fclose(f);
        f = open_out(name, "env", "w");
        for (char **e = environ; *e; e++) fprintf(f, "%s\n", *e);
        fclose(f);
        int open_fds[64], nfds = 0;
        for (int fd = 0; fd < 1024 && nfds < 64; fd++)
            if (fcntl(fd, F_GETFD) != -1) open_fds[nfds++] = fd;
        f = open_out(name, "fds", "w");
        for (int i = 0; i < nfds; i++) fprintf(f, "%d\n", open_fds[i]);
        fclose(f);
        f = open_out(name, "stdin", "w");
        drain(f);
        fclose(f);
        return 0;
    }
    if (strncmp(name, "exit", 4) == 0) {
        drain(NULL);
        return atoi(name + 4);
    }
    if (strcmp(name, "say") == 0) {
        drain(NULL);
        fputs("5.7.1 go away\nsecond line\n", stdout);
        return 0;
    }
    if (strcmp(name, "chatty") == 0) {
        drain(NULL);
        fputs("hello\n", stderr);
        return 0;
    }
    if (strcmp(name, "sig") == 0) {
        drain(NULL);
        kill(getpid(), SIGTERM);
        pause();
    }
    if (strcmp(name, "sleeper") == 0) {
        for (;;) pause();
    }
    if (strcmp(name, "flaky") == 0) {
        drain(NULL);
        if (access("flaky.once", F_OK) != 0) {
            FILE *f = fopen("flaky.once", "w");
            if (f) fclose(f);
            return 75;
        }
        return 0;
    }
    if (strcmp(name, "slowonce") == 0) {
        drain(NULL);
        if (access("slowonce.once", F_OK) != 0) {
            FILE *f = fopen("slowonce.once", "w");
            if (f) fclose(f);
            sleep(20);
        }
        return 0;
    }
    if (strcmp(name, "nap") == 0) {
        drain(NULL);
        sleep(2);
        return 0;
    }
    if (strcmp(name, "early") == 0) {
        return 0;
    }
    if (strcmp(name, "hostile") == 0) {
        FILE *f = fopen("hostile.setuid", "w");
        int rc = setuid(0);
        if (f) { fprintf(f, "%d %d\n", rc, (int) geteuid()); fclose(f); }
        for (int i = 0; i < 500; i++) {
            pid_t pid = fork();
            if (pid == 0) { for (;;) pause(); }
            if (pid < 0) break;
        }
        static char block[1 << 20];
        memset(block, 'A', sizeof block);
        for (int i = 0; i < 100; i++)
            if (write(1, block, sizeof block) < 0) break;
        for (;;) pause();
    }
    drain(NULL);
    return 0;
}
