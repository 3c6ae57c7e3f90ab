/* The raw spawn limit: what a program-delivery system could do at best on this machine.
 *
 *   spawn PROGRAM UID GID RUNS WORKERS MESSAGE_FILE
 *
 * WORKERS processes each loop RUNS/WORKERS times: pipe, fork; the child drops
 * supplementary groups, setgid, setuid (to the bench uid) and execs PROGRAM with the
 * environment mailexec gives (TZ, AGENT); the parent writes the message (1 KiB) to
 * the pipe, closes it and waitpid()s. Prints one JSON line: runs, failures, elapsed
 * seconds, runs/s, CPU seconds of the loop and everything it spawned. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int loop(const char *prog, uid_t uid, gid_t gid, long runs, const char *msg, size_t len) {
    char *argv[] = {(char *)prog, NULL};
    char *envp[] = {"TZ=UTC", "AGENT=mailexec", NULL};
    int failures = 0;
    for (long i = 0; i < runs; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) { failures++; continue; }
        pid_t pid = fork();
        if (pid == 0) {
            if (dup2(p[0], 0) < 0) _exit(126);
            if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0) _exit(126);
            execve(prog, argv, envp);
            _exit(127);
        }
        close(p[0]);
        if (pid < 0) { close(p[1]); failures++; continue; }
        size_t off = 0;
        while (off < len) {
            ssize_t w = write(p[1], msg + off, len - off);
            if (w < 0) { if (errno == EINTR) continue; break; }
            off += (size_t)w;
        }
        close(p[1]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failures++;
    }
    return failures;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s PROGRAM UID GID RUNS WORKERS MESSAGE_FILE\n", argv[0]);
        return 64;
    }
    const char *prog = argv[1];
    uid_t uid = (uid_t)atol(argv[2]);
    gid_t gid = (gid_t)atol(argv[3]);
    long runs = atol(argv[4]);
    int workers = atoi(argv[5]);
    static char msg[4 << 20];
    int fd = open(argv[6], O_RDONLY);
    if (fd < 0) { perror("message"); return 66; }
    ssize_t len = read(fd, msg, sizeof msg);
    close(fd);
    if (len <= 0) return 66;
    double t0 = now();
    int pipes[64][2];
    pid_t kids[64];
    if (workers < 1 || workers > 64) return 64;
    for (int w = 0; w < workers; w++) {
        if (pipe(pipes[w]) < 0) return 71;
        kids[w] = fork();
        if (kids[w] == 0) {
            long mine = runs / workers + (w < runs % workers ? 1 : 0);
            int f = loop(prog, uid, gid, mine, msg, (size_t)len);
            ssize_t r = write(pipes[w][1], &f, sizeof f);
            (void)r;
            _exit(0);
        }
    }
    int failures = 0;
    for (int w = 0; w < workers; w++) {
        int f = 0;
        ssize_t r = read(pipes[w][0], &f, sizeof f);
        if (r == sizeof f) failures += f;
        waitpid(kids[w], NULL, 0);
    }
    double elapsed = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"runs\": %ld, \"failures\": %d, \"workers\": %d, \"elapsed_s\": %.6f, \"runs_per_s\": %.1f, \"cpu_s\": %.6f}\n",
           runs, failures, workers, elapsed, runs / elapsed, cpu);
    return 0;
}
