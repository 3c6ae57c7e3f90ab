/* Hostile delivery programs for tests/security; behaviour chosen by argv[0]'s basename.
 * Built by the tests with -DTRUSTED_DIR="..." -DHOMES_BASE="...". Each records what it
 * managed to do in ./<name>.out (cwd = the account's home) so the test can read it back.
 *
 *   ok          reads stdin, appends "ok" to ./ok.log, exits 0   (the "next delivery")
 *   copy        copies stdin exactly to ./stdin.copy, exits 0
 *   privesc     setuid(0), setgid(0), setgroups, setresuid, seteuid, exec of a setuid binary
 *   procspy     the executor's (parent's) /proc environ, fd, mem, maps, ptrace; every
 *               readable /proc/N/environ holding "MAILEXEC_"
 *   escape      creates files outside its home: /, /etc, the trusted dir, other homes, /tmp
 *   netcat      connects to every "host port" line of ./targets, and to 1.1.1.1:53
 *   forkbomb    forks forever (every child too)
 *   memhog      mallocs and touches 1 MiB blocks until refused, then spins
 *   spin        burns CPU forever
 *   sleeper     sleeps forever
 *   escapee     fork, setsid, fork again: the grandchild writes ./escapee.pid and sleeps
 *               forever; the program itself exits 0 (a successful delivery)
 *   flood       writes 1 GiB to stdout, exits 0
 *   earlyclose  closes stdin at once and exits 0 (on a 10 MiB message)
 *   replace     tries to overwrite, unlink, rename over and chmod every file of the
 *               trusted dir, then writes "v1" to ./replace.ran
 *   impostor    writes ./IMPOSTOR-RAN (must never run: it stands in for swapped bytes)
 *   contain     for every line of ./targets: "unix PATH" connects to a filesystem Unix
 *               socket, "abstract NAME" to an abstract one, "proc PID" opens
 *               /proc/PID/status, "tcp HOST PORT" connects; then records its pid, the
 *               pids /proc lists, the umask and the mode of a file it creates, what the
 *               host's /tmp marker ./targets names ("marker PATH") looks like from here
 *   hider       fork, setsid, fork again: the grandchild pauses forever; the program
 *               itself pauses forever too (a run that must die with its executor)
 *   nprochog    forks until the uid's process limit refuses (children pause), writes
 *               ./nprochog.forks, holds them for 4 s, exits 0
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef TRUSTED_DIR
#define TRUSTED_DIR "/var/lib/mailexec/trusted"
#endif
#ifndef HOMES_BASE
#define HOMES_BASE "/tmp"
#endif

static FILE *out;

static void drain(int fd_copy) {
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0)
        if (fd_copy >= 0 && write(fd_copy, buf, (size_t) n) != n) _exit(3);
}

static void rec(const char *what, int rc) {
    /* "OK what" when the attack step worked, "DENIED what errno" when it did not */
    if (rc >= 0) fprintf(out, "OK %s\n", what);
    else fprintf(out, "DENIED %s %s\n", what, strerror(errno));
    fflush(out);
}

static int try_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n < 0 ? -1 : 0;
}

static int try_create(const char *dir, const char *leaf) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    (void) argc;
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    char outname[256];
    snprintf(outname, sizeof outname, "%s.out", name);
    out = fopen(outname, "w");
    if (!out) out = stderr;

    if (!strcmp(name, "ok")) {
        drain(-1);
        FILE *f = fopen("ok.log", "a");
        if (f) { fputs("ok\n", f); fclose(f); }
        return 0;
    }
    if (!strcmp(name, "copy")) {
        int fd = open("stdin.copy", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        drain(fd);
        close(fd);
        return 0;
    }
    if (!strcmp(name, "privesc")) {
        drain(-1);
        rec("setuid0", setuid(0));
        rec("setgid0", setgid(0));
        gid_t g = 0;
        rec("setgroups0", setgroups(1, &g));
        rec("setresuid0", setresuid(0, 0, 0));
        rec("seteuid0", seteuid(0));
        fprintf(out, "IDS %d %d %d %d\n", (int) getuid(), (int) geteuid(), (int) getgid(), (int) getegid());
        fflush(out);
        /* A setuid-root binary: with no_new_privs it must not gain root. */
        const char *suid[] = {"/usr/bin/passwd", "/bin/su", "/usr/bin/newgrp", "/bin/mount", NULL};
        for (int i = 0; suid[i]; i++) {
            struct stat st;
            if (stat(suid[i], &st) == 0 && (st.st_mode & S_ISUID)) {
                pid_t pid = fork();
                if (pid == 0) {
                    /* "id -u" would be easier but may be absent: /proc/self/status via awk-less exec */
                    char *args[] = {(char *) suid[i], "--help", NULL};
                    int fd = open("privesc.suid", O_WRONLY | O_CREAT | O_APPEND, 0600);
                    dup2(fd, 1); dup2(fd, 2);
                    execv(suid[i], args);
                    _exit(127);
                }
                int st2; waitpid(pid, &st2, 0);
                fprintf(out, "SUID %s ran\n", suid[i]);
                break;
            }
        }
        return 0;
    }
    if (!strcmp(name, "procspy")) {
        drain(-1);
        pid_t pp = getppid();
        char path[512];
        fprintf(out, "PPID %d\n", (int) pp);
        snprintf(path, sizeof path, "/proc/%d/environ", (int) pp);
        rec("parent-environ", try_read(path));
        snprintf(path, sizeof path, "/proc/%d/mem", (int) pp);
        rec("parent-mem", open(path, O_RDONLY));
        snprintf(path, sizeof path, "/proc/%d/maps", (int) pp);
        rec("parent-maps", try_read(path));
        snprintf(path, sizeof path, "/proc/%d/fd", (int) pp);
        DIR *d = opendir(path);
        rec("parent-fd-dir", d ? 0 : -1);
        if (d) closedir(d);
        snprintf(path, sizeof path, "/proc/%d/fd/0", (int) pp);
        rec("parent-fd-open", open(path, O_RDONLY));
        snprintf(path, sizeof path, "/proc/%d/cwd/", (int) pp);
        d = opendir(path);
        rec("parent-cwd", d ? 0 : -1);
        if (d) closedir(d);
        rec("parent-ptrace", (int) ptrace(PTRACE_ATTACH, pp, NULL, NULL));
        rec("parent-kill0", kill(pp, 0));  /* signalling root's process is refused */
        rec("init-environ", try_read("/proc/1/environ"));
        /* any process at all whose environment mentions MAILEXEC_ */
        DIR *proc = opendir("/proc");
        struct dirent *e;
        int leaks = 0;
        while (proc && (e = readdir(proc))) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            snprintf(path, sizeof path, "/proc/%s/environ", e->d_name);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            static char buf[1 << 16];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0 && memmem(buf, (size_t) n, "MAILEXEC_", 9)) { fprintf(out, "LEAK %s\n", e->d_name); leaks++; }
        }
        if (proc) closedir(proc);
        fprintf(out, "LEAKS %d\n", leaks);
        return 0;
    }
    if (!strcmp(name, "escape")) {
        drain(-1);
        char leaf[64];
        snprintf(leaf, sizeof leaf, "mailexec-pwned-%d", (int) getuid());
        rec("root-dir", try_create("", leaf));
        rec("etc", try_create("/etc", leaf));
        rec("trusted-dir", try_create(TRUSTED_DIR, leaf));
        rec("var-lib", try_create("/var/lib", leaf));
        rec("homes-base", try_create(HOMES_BASE, leaf));
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
        DIR *d = opendir(HOMES_BASE);
        struct dirent *e;
        int others = 0, written = 0;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/%s", HOMES_BASE, e->d_name);
            if (!strcmp(dir, cwd)) continue;
            others++;
            if (try_create(dir, leaf) == 0) written++;
        }
        if (d) closedir(d);
        fprintf(out, "OTHER-HOMES %d written %d\n", others, written);
        rec("tmp", try_create("/tmp", leaf));  /* works: the run's own private /tmp */
        return 0;
    }
    if (!strcmp(name, "netcat")) {
        drain(-1);
        FILE *t = fopen("targets", "r");
        char host[128]; int port;
        while (t && fscanf(t, "%127s %d", host, &port) == 2) {
            int fam = strchr(host, ':') ? AF_INET6 : AF_INET;
            int s = socket(fam, SOCK_STREAM, 0);
            int rc;
            if (s < 0) { rc = -1; }
            else if (fam == AF_INET) {
                struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port)};
                inet_pton(AF_INET, host, &a.sin_addr);
                rc = connect(s, (struct sockaddr *) &a, sizeof a);
            } else {
                struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t) port)};
                inet_pton(AF_INET6, host, &a.sin6_addr);
                rc = connect(s, (struct sockaddr *) &a, sizeof a);
            }
            char what[200];
            snprintf(what, sizeof what, "connect-%s-%d", host, port);
            rec(what, rc);
            if (s >= 0) close(s);
        }
        if (t) fclose(t);
        return 0;
    }
    if (!strcmp(name, "forkbomb")) {
        fclose(out);
        for (;;) fork();
    }
    if (!strcmp(name, "memhog")) {
        size_t mib = 0;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) break;
            memset(p, 1, 1 << 20);
            mib++;
        }
        fprintf(out, "REFUSED after %zu MiB\n", mib);
        fflush(out);
        for (;;) {}
    }
    if (!strcmp(name, "spin")) { fclose(out); for (volatile unsigned long i = 0;; i++) {} }
    if (!strcmp(name, "sleeper")) { fclose(out); for (;;) pause(); }
    if (!strcmp(name, "escapee")) {
        drain(-1);
        fclose(out);
        pid_t pid = fork();
        if (pid == 0) {
            setsid();
            signal(SIGHUP, SIG_IGN);
            pid_t pid2 = fork();
            if (pid2 == 0) {
                FILE *f = fopen("escapee.pid.tmp", "w");
                if (f) { fprintf(f, "%d\n", (int) getpid()); fclose(f); rename("escapee.pid.tmp", "escapee.pid"); }
                for (;;) pause();
            }
            _exit(0);
        }
        waitpid(pid, NULL, 0);
        for (int i = 0; i < 200 && access("escapee.pid", F_OK) != 0; i++) usleep(10000);
        return 0;
    }
    if (!strcmp(name, "flood")) {
        fclose(out);
        static char block[1 << 20];
        memset(block, 'A', sizeof block);
        for (int i = 0; i < 1024; i++) {
            size_t done = 0;
            while (done < sizeof block) {
                ssize_t n = write(1, block + done, sizeof block - done);
                if (n < 0) return 9;
                done += (size_t) n;
            }
        }
        return 0;
    }
    if (!strcmp(name, "earlyclose")) { fclose(out); close(0); return 0; }
    if (!strcmp(name, "replace")) {
        drain(-1);
        DIR *d = opendir(TRUSTED_DIR);
        struct dirent *e;
        int files = 0;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", TRUSTED_DIR, e->d_name);
            files++;
            rec("open-write", open(path, O_WRONLY));
            rec("truncate", truncate(path, 0));
            rec("chmod", chmod(path, 0777));
            rec("unlink", unlink(path));
            char tmp[4096];
            snprintf(tmp, sizeof tmp, "%s/.evil-%d", TRUSTED_DIR, (int) getpid());
            int fd = open(tmp, O_WRONLY | O_CREAT, 0755);
            rec("create-beside", fd);
            if (fd >= 0) { close(fd); rec("rename-over", rename(tmp, path)); }
            rec("symlink-beside", symlink("/bin/true", tmp));
        }
        if (d) closedir(d);
        fprintf(out, "FILES %d\n", files);
        FILE *f = fopen("replace.ran", "a");
        if (f) { fputs("v1\n", f); fclose(f); }
        return 0;
    }
    if (!strcmp(name, "contain")) {
        drain(-1);
        FILE *t = fopen("targets", "r");
        char line[1024];
        while (t && fgets(line, sizeof line, t)) {
            char kind[32], a[900], b[32], what[1024];
            int n = sscanf(line, "%31s %899s %31s", kind, a, b);
            if (n < 2) continue;
            snprintf(what, sizeof what, "%s:%s%s%s", kind, a, n > 2 ? ":" : "", n > 2 ? b : "");
            if (!strcmp(kind, "unix") || !strcmp(kind, "abstract")) {
                struct sockaddr_un sa = {.sun_family = AF_UNIX};
                socklen_t len;
                if (!strcmp(kind, "unix")) {
                    snprintf(sa.sun_path, sizeof sa.sun_path, "%.100s", a);
                    len = sizeof sa;
                } else {
                    snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, "%.100s", a);
                    len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1
                                       + strlen(sa.sun_path + 1));
                }
                int s1 = socket(AF_UNIX, SOCK_STREAM, 0);
                rec(what, connect(s1, (struct sockaddr *) &sa, len));
                close(s1);
            } else if (!strcmp(kind, "proc")) {
                char path[1024];
                snprintf(path, sizeof path, "/proc/%.900s/status", a);
                rec(what, try_read(path));
            } else if (!strcmp(kind, "tcp") && n > 2) {
                struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t) atoi(b))};
                inet_pton(AF_INET, a, &sa.sin_addr);
                int s1 = socket(AF_INET, SOCK_STREAM, 0);
                rec(what, connect(s1, (struct sockaddr *) &sa, sizeof sa));
                close(s1);
            } else if (!strcmp(kind, "marker")) {
                rec(what, access(a, F_OK));
            }
        }
        if (t) fclose(t);
        fprintf(out, "PID %d PPID %d\n", (int) getpid(), (int) getppid());
        DIR *proc = opendir("/proc");
        struct dirent *e;
        fprintf(out, "PROCS");
        while (proc && (e = readdir(proc)))
            if (e->d_name[0] >= '0' && e->d_name[0] <= '9') fprintf(out, " %s", e->d_name);
        if (proc) closedir(proc);
        mode_t old = umask(0);
        umask(old);
        int fd = open("umask.probe", O_WRONLY | O_CREAT | O_TRUNC, 0666);
        struct stat st;
        fstat(fd, &st);
        close(fd);
        fprintf(out, "\nUMASK %04o FILEMODE %04o\n", (unsigned) old, (unsigned) (st.st_mode & 07777));
        fd = open("/tmp/contain-was-here", O_WRONLY | O_CREAT, 0600);
        rec("tmp-write", fd);
        if (fd >= 0) close(fd);
        DIR *run = opendir("/run");
        int entries = 0;
        while (run && (e = readdir(run))) entries += e->d_name[0] != '.';
        if (run) closedir(run);
        fprintf(out, "RUN-ENTRIES %d\n", entries);
        return 0;
    }
    if (!strcmp(name, "hider")) {
        drain(-1);
        fclose(out);
        if (fork() == 0) { setsid(); if (fork() == 0) { for (;;) pause(); } _exit(0); }
        for (;;) pause();
    }
    if (!strcmp(name, "nprochog")) {
        drain(-1);
        int forks = 0;
        for (;;) {
            pid_t pid = fork();
            if (pid == 0) { for (;;) pause(); }
            if (pid < 0) break;
            forks++;
        }
        FILE *f = fopen("nprochog.forks", "w");
        if (f) { fprintf(f, "%d %d\n", forks, errno); fclose(f); }
        fclose(out);
        sleep(4);
        return 0;   /* its children die with the run's PID namespace */
    }
    if (!strcmp(name, "impostor")) {
        drain(-1);
        FILE *f = fopen("IMPOSTOR-RAN", "w");
        if (f) fclose(f);
        return 0;
    }
    drain(-1);
    return 0;
}
