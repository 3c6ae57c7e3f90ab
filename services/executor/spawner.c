/*
 * NAME
 *      mailexec-spawner - long-lived root helper that starts delivery programs
 *
 * SYNOPSIS
 *      mailexec-spawner SOCKFD PPID (a SOCK_SEQPACKET unix socket; the executor's pid)
 *
 * DESCRIPTION
 *      Started once per executor by services/executor/sandbox.py (Sandbox.start),
 *      already inside the executor's empty network namespace, so every program
 *      it starts is born there. It replaces one exec of mailexec-launch per
 *      delivery: the executor sends a request, the spawner clones, the child
 *      does exactly what launcher.c does and fexecve()s the program.
 *
 *      Requests (one seqpacket message each, native byte order):
 *        SPAWN: struct req_spawn, then three NUL-terminated strings
 *               home, argv0, TZ value; SCM_RIGHTS fds in this order:
 *               exec fd, stdin (pipe read end), output (pipe write end),
 *               status (CLOEXEC pipe write end), [cgroup v2 directory].
 *        KILL:  struct req_spawn with only op and id: SIGKILL the process
 *               group of that run if it is still ours (timeouts).
 *      Replies (struct reply):
 *        SPAWNED id pid 0    + the child's pidfd via SCM_RIGHTS;
 *        SPAWNED id -1 errno   when clone3 itself failed (nothing runs);
 *        EXITED  id pid wait-status, after the process group was SIGKILLed
 *               (a program must not outlive its delivery) and the main
 *               process reaped.
 *      EOF on the socket (executor gone or closing): SIGKILL every live run's
 *      process group and exit. PR_SET_PDEATHSIG kills the spawner with the
 *      executor. The executor kills the run's cgroup (setsid escapees) and
 *      recycles it once empty; the spawner only places the child in it.
 *
 * THE CHILD (same order and guarantees as launcher.c)
 *      0. born in the run's cgroup (clone3 CLONE_INTO_CGROUP: no migration)
 *         and in the spawner's network namespace; signal mask emptied and
 *         every handler reset (so nothing odd survives the exec);
 *      1. stdin/stdout/stderr = the request's pipes;
 *      2. refuses uid 0 and gid 0;
 *      3. setsid(2): own session and process group;
 *      4. RLIMIT_CPU soft S hard S+1, AS, NPROC, FSIZE, NOFILE soft == hard,
 *         CORE 0 (before setuid: NPROC is checked at setuid time);
 *      5. setgroups(0), setgid, setuid (real, effective, saved), verified,
 *         and setuid(0)/setgid(0) must fail;
 *      6. PR_SET_NO_NEW_PRIVS;
 *      7. chdir(home) as the user, else chdir("/tmp");
 *      8. closes every fd above 2 except the exec fd and the status fd
 *         (close-on-exec); the exec fd stays open only for "#!" scripts;
 *      9. fexecve(exec fd, {argv0}, {"TZ=...", "AGENT=mailexec"}).
 *      Steps 2 to 9 are child_recipe.h (run_child_recipe), the one copy
 *      launcher.c runs as well.
 *      Errors before exec: "<step> <errno>\n" on the status fd, exit 127 -
 *      never program output (as launcher.c).
 *
 * DOES NOT
 *      Enforce the timeout, stream stdin, read output, manage cgroups, look
 *      up users, or use the network. It runs nothing but the fd it is given.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child_recipe.h"

#define OP_SPAWN 1
#define OP_KILL 2
#define OP_SPAWNED 1
#define OP_EXITED 2
#define MAX_FDS 5
#define MAX_MSG 8192

struct req_spawn {              /* keep in sync with _REQ in sandbox.py */
    uint32_t op, id, uid, gid;
    int64_t cpu, as, nproc, fsize, nofile;      /* -1: leave alone */
};

struct reply {                  /* keep in sync with _REPLY in sandbox.py */
    uint32_t op, id;
    int32_t pid, value;
};

struct live { pid_t pid; uint32_t id; };

static struct live *runs;
static size_t nruns, cap;
static int SOCK_FD = -1;    /* argv[1] */

/* ---- child side: runs between clone3 and fexecve, no return ---- */

static void child(const struct req_spawn *rq, const char *home, const char *argv0,
                  const char *tz, int exec_fd, int in_fd, int out_fd)
{
    char tzvar[300], *argv[2] = {(char *) argv0, NULL};
    char *envp[3] = {tzvar, "AGENT=mailexec", NULL};
    sigset_t none;

    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);   /* errors for KILL/STOP and RT internals are harmless */
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
        fail("dup2", errno);
    refuse_root_ids(rq->uid, rq->gid);
    if ((size_t) snprintf(tzvar, sizeof tzvar, "TZ=%s", tz) >= sizeof tzvar)
        fail("tz", ENAMETOOLONG);
    /* setsid, rlimits, drop to uid/gid, no_new_privs, chdir, fds, fexecve */
    run_child_recipe(&(struct child_recipe) {
        .uid = (uid_t) rq->uid, .gid = (gid_t) rq->gid,
        .limits = {.cpu = rq->cpu, .as = rq->as, .nproc = rq->nproc, .fsize = rq->fsize,
                   .nofile = rq->nofile},
        .home = home, .exec_fd = exec_fd, .keep_fd = -1, .argv = argv, .envp = envp,
    });
}

/* ---- spawner side ---- */

static void send_reply(uint32_t op, uint32_t id, int32_t pid, int32_t value, int fd)
{
    struct reply rp = {op, id, pid, value};
    struct iovec iov = {&rp, sizeof rp};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};

    if (fd >= 0) {
        struct cmsghdr *c;

        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof u.buf;
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    /* Blocking: the executor reads replies without ever blocking on us. */
    while (sendmsg(SOCK_FD, &msg, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            _exit(1);       /* executor gone: PDEATHSIG / EOF handle the rest */
    }
}

static void kill_all_and_exit(int code)
{
    for (size_t i = 0; i < nruns; i++)
        kill(-runs[i].pid, SIGKILL);
    _exit(code);
}

static void spawn(const struct req_spawn *rq, const char *strings, size_t len,
                  const int *fds, int nfds)
{
    const char *home = strings, *argv0, *tz;
    struct clone_args ca = {.flags = CLONE_PIDFD, .exit_signal = SIGCHLD};
    int pidfd = -1;
    long pid;

    /* three NUL-terminated strings, nothing else */
    argv0 = memchr(home, 0, len) ? home + strlen(home) + 1 : NULL;
    tz = argv0 && argv0 < strings + len && memchr(argv0, 0, (size_t) (strings + len - argv0))
        ? argv0 + strlen(argv0) + 1 : NULL;
    if (tz == NULL || tz >= strings + len || !memchr(tz, 0, (size_t) (strings + len - tz))
        || (nfds != 4 && nfds != 5)) {
        send_reply(OP_SPAWNED, rq->id, -1, EINVAL, -1);
        return;
    }
    if (nfds == 5) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t) fds[4];
    }
    ca.pidfd = (uint64_t) (uintptr_t) &pidfd;
    if (nruns == cap) {
        size_t ncap = cap ? cap * 2 : 64;
        struct live *grown = realloc(runs, ncap * sizeof *runs);

        if (grown == NULL) {
            send_reply(OP_SPAWNED, rq->id, -1, ENOMEM, -1);
            return;
        }
        runs = grown;
        cap = ncap;
    }
    pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0) {
        status_fd = fds[3];
        child(rq, home, argv0, tz, fds[0], fds[1], fds[2]);
    }
    if (pid < 0) {
        send_reply(OP_SPAWNED, rq->id, -1, errno, -1);
        return;
    }
    runs[nruns].pid = (pid_t) pid;
    runs[nruns++].id = rq->id;
    send_reply(OP_SPAWNED, rq->id, (int32_t) pid, 0, pidfd);
    close(pidfd);
}

static void kill_run(uint32_t id)
{
    for (size_t i = 0; i < nruns; i++)
        if (runs[i].id == id)
            kill(-runs[i].pid, SIGKILL);
}

/* Read every pending request; returns 0 on EOF. */
static int serve_requests(void)
{
    for (;;) {
        char buf[MAX_MSG];
        union { char buf[CMSG_SPACE(MAX_FDS * sizeof(int))]; struct cmsghdr align; } u;
        struct iovec iov = {buf, sizeof buf};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = u.buf, .msg_controllen = sizeof u.buf};
        int fds[MAX_FDS], nfds = 0;
        struct req_spawn rq;
        ssize_t n = recvmsg(SOCK_FD, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 1 : 0;
        if (n == 0)
            return 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int count = (int) ((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

                for (int i = 0; i < count && nfds < MAX_FDS; i++)
                    memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        if ((size_t) n >= sizeof rq && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            memcpy(&rq, buf, sizeof rq);
            if (rq.op == OP_SPAWN)
                spawn(&rq, buf + sizeof rq, (size_t) n - sizeof rq, fds, nfds);
            else if (rq.op == OP_KILL)
                kill_run(rq.id);
        } else if ((size_t) n >= 2 * sizeof(uint32_t)) {
            memcpy(&rq, buf, 2 * sizeof(uint32_t));
            if (rq.op == OP_SPAWN)
                send_reply(OP_SPAWNED, rq.id, -1, EINVAL, -1);
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
}

/* Reap every exited run: kill its process group first (the zombie keeps the
 * pgid reserved), then report the wait status. */
static void reap_children(void)
{
    for (;;) {
        siginfo_t si = {0};
        int status;

        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0)
            return;
        kill(-si.si_pid, SIGKILL);
        if (waitpid(si.si_pid, &status, 0) != si.si_pid)
            return;
        for (size_t i = 0; i < nruns; i++)
            if (runs[i].pid == si.si_pid) {
                send_reply(OP_EXITED, runs[i].id, si.si_pid, status, -1);
                runs[i] = runs[--nruns];
                break;
            }
    }
}

int main(int argc, char **argv)
{
    sigset_t chld;
    struct pollfd pfd[2];
    char *end;

    long parent;

    if (argc != 3 || (SOCK_FD = (int) strtol(argv[1], &end, 10)) < 3 || *end != '\0')
        return 2;
    /* The executor's pid: if it died before PDEATHSIG was armed, we were re-parented and
     * getppid() differs. (Comparing with 1 would be wrong: in a container the executor
     * itself is pid 1.) */
    if ((parent = strtol(argv[2], &end, 10)) < 1 || *end != '\0')
        return 2;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != (pid_t) parent)
        return 1;
    /* fds 0-2 must be taken, so that received fds never land there (dup2 in child) */
    for (;;) {
        int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

        if (fd < 0)
            return 1;
        if (fd >= 3) {
            close(fd);
            break;
        }
    }
    if (fcntl(SOCK_FD, F_SETFD, FD_CLOEXEC) != 0)
        return 1;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0)
        return 1;
    pfd[0].fd = SOCK_FD;
    pfd[0].events = POLLIN;
    pfd[1].fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    pfd[1].events = POLLIN;
    if (pfd[1].fd < 0)
        return 1;
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            kill_all_and_exit(1);
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo info;

            while (read(pfd[1].fd, &info, sizeof info) > 0)
                ;
            reap_children();
        }
        if (pfd[0].revents && !serve_requests())
            kill_all_and_exit(0);
    }
}
