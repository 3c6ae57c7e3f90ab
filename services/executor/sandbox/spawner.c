/*
 * NAME
 *      mailexec-spawner - the one root helper that starts delivery programs
 *
 * SYNOPSIS
 *      mailexec-spawner --sock FD --parent PID [--netns FD]... [--min-uid N]
 *              [--forbid-uid N]...
 *
 * DESCRIPTION
 *      Started once per executor by services/executor/sandbox/spawner.py, as
 *      root, before the executor's Python process gives up its privileges. It
 *      is the only process of mailexec that keeps the power to change uid, to
 *      make namespaces and to kill programs; the executor speaks to it over one
 *      SOCK_SEQPACKET socket (FD). Built at install time (make venv, the
 *      Dockerfile) into <sys.prefix>/libexec/mailexec-spawner; the executor
 *      refuses to run a copy that root does not own or others can write.
 *
 *      Network namespaces: each --netns FD is an open namespace fd, in order:
 *      index 0 the shared empty one (lo down), index 1 the egress one. The
 *      spawner enters index 0 at start, so a run there is born in it at no
 *      cost; a run asking for another index setns()es in its child.
 *      Without --netns the runs share the spawner's network namespace.
 *
 *      Mounts: at start the spawner makes its own mount namespace, "/" private,
 *      /run and /var/run an empty read-only tmpfs (child_recipe.h,
 *      spawner_mounts()); each run copies it and adds its own /tmp, /dev/shm,
 *      /proc. Insecure-mode programs can therefore not live under /run.
 *
 * TRUSTS
 *      Its parent (the executor, PID) only to the extent of the requests
 *      below; every request is checked here as if the other end were hostile:
 *      a compromised executor can ask for any run, but never for uid or gid 0,
 *      a uid below --min-uid, a --forbid-uid (the executor's service uid, the
 *      owners of PostgreSQL and RabbitMQ), or an unknown network index.
 *
 * DEFENDS AGAINST                                      (test that shows it)
 *      requests for uid/gid 0, low or forbidden uids   test_containment: test_spawner_refuses_*
 *        (sent raw to the socket, not through Python)
 *      a program outliving its delivery or the         test_containment: test_killing_the_
 *        executor (kill -9 under load)                   executor_leaves_no_program
 *      runs reaching host sockets, /proc of others     child_recipe.h
 *      fds landing on 0-2, oversized/truncated         test_containment: test_spawner_refuses_
 *        requests                                        malformed_requests
 *      a hijacked spawner using more privilege than    test_privsep: test_spawner_keeps_
 *        runs need: after its set-up it keeps only       only_what_it_needs
 *        SETUID, SETGID, KILL, SYS_ADMIN and
 *        DAC_OVERRIDE (capset.h; bounding set too)
 *
 * PROTOCOL (one seqpacket message each, native byte order)
 *      SPAWN: struct req_spawn, then three NUL-terminated strings home, argv0,
 *             TZ value; SCM_RIGHTS fds in this order: exec fd, stdin (pipe read
 *             end), output (pipe write end), status (CLOEXEC pipe write end),
 *             [cgroup v2 directory]. clone3(CLONE_NEWPID | CLONE_NEWNS |
 *             CLONE_PIDFD [| CLONE_INTO_CGROUP]): the child is pid 1 of the
 *             run's own PID namespace and forks the program as pid 2
 *             (child_recipe.h); killing the pid 1 ends every process of the run.
 *      KILL:  struct req_spawn with only op and id: SIGKILL that run's pid 1
 *             if it is still ours (timeouts).
 *      OPEN:  struct req_spawn with op, id, uid, gid, then one NUL-terminated
 *             absolute path (insecure mode's program): a forked child drops to
 *             uid/gid (same refusals as SPAWN) and opens it read-only with
 *             O_NONBLOCK|O_NOCTTY, so the account's own rights decide (a file in
 *             a directory it can't search stays closed to it), and refuses
 *             anything but a regular file (a device node is never opened as
 *             root, nor as the user: fstat comes after an O_PATH open).
 *      Replies (struct reply):
 *        SPAWNED id pid 0    + the child's pidfd via SCM_RIGHTS;
 *        SPAWNED id -1 errno   nothing runs: EPERM = refused identity,
 *                              ENONET = no such network namespace, else
 *                              clone3's own error;
 *        EXITED  id pid wait-status of the run's pid 1, once reaped (by then the
 *               kernel has killed every process of its PID namespace); the
 *               program's own wait status is on the status pipe ("status N").
 *        OPENED  id 0 0 + the fd, or id -1 errno (ENOEXEC: not a regular file);
 *               sent by the opening child itself.
 *        READY   0 pid 0, once, when the set-up is done; a spawner that can't set
 *               up says why on stderr and exits, and the executor refuses to start.
 *
 * DEATH, EITHER SIDE
 *      EOF on the socket (executor gone or closing): SIGKILL every live run and
 *      exit. PR_SET_PDEATHSIG kills the spawner with the executor; each run's
 *      pid 1 has PR_SET_PDEATHSIG(SIGKILL) armed on the spawner (child_recipe.h
 *      step 10), so the death of the spawner, by any cause, SIGKILLs every run
 *      - and a PID namespace dies with its init. There is no window in which a
 *      program survives both: the child checks, after arming, that the
 *      spawner is still alive (its pidfd).
 *
 * DOES NOT
 *      Enforce the timeout, stream stdin, read output, manage cgroups, look up
 *      users, or use the network. It runs nothing but the fd it is given.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "capset.h"
#include "child_recipe.h"

#define OP_SPAWN 1
#define OP_KILL 2
#define OP_OPEN 3
#define OP_SPAWNED 1
#define OP_EXITED 2
#define OP_OPENED 3
#define OP_READY 4
#define MAX_FDS 5
#define MAX_MSG 8192
#define MAX_NETNS 4
#define MAX_FORBIDDEN 64

struct req_spawn {              /* keep in sync with _REQ in spawner.py */
    uint32_t op, id, uid, gid, netns, reserved;
    int64_t cpu, as, nproc, fsize, nofile;      /* -1: leave alone */
    int64_t tmp_bytes;                          /* private /tmp and /dev/shm size */
};

struct reply {                  /* keep in sync with _REPLY in spawner.py */
    uint32_t op, id;
    int32_t pid, value;
};

struct live { pid_t pid; uint32_t id; int is_open; };

static struct live *runs;
static size_t nruns, cap;
static int SOCK_FD = -1;
static int SELF_PIDFD = -1;
static int netns_fds[MAX_NETNS];
static int n_netns;
static unsigned long min_uid = 1;
static unsigned long forbidden[MAX_FORBIDDEN];
static int n_forbidden;

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
    if ((size_t) snprintf(tzvar, sizeof tzvar, "TZ=%s", tz) >= sizeof tzvar)
        fail("tz", ENAMETOOLONG);
    run_child_recipe(&(struct child_recipe) {
        .uid = (uid_t) rq->uid, .gid = (gid_t) rq->gid,
        .limits = {.cpu = rq->cpu, .as = rq->as, .nproc = rq->nproc, .fsize = rq->fsize,
                   .nofile = rq->nofile},
        .tmp_bytes = rq->tmp_bytes,
        .netns_fd = rq->netns == 0 ? -1 : netns_fds[rq->netns],
        .spawner_pidfd = SELF_PIDFD,
        .home = home, .exec_fd = exec_fd, .argv = argv, .envp = envp,
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
            _exit(1);       /* executor gone: every run's PDEATHSIG does the rest */
    }
}

static void kill_all_and_exit(int code)
{
    for (size_t i = 0; i < nruns; i++)
        kill(runs[i].pid, SIGKILL);     /* pid 1 of its namespace: the whole run */
    _exit(code);
}

/* Room for one more entry in runs[]; 0 when out of memory. */
static int grow_runs(void)
{
    if (nruns == cap) {
        size_t ncap = cap ? cap * 2 : 64;
        struct live *grown = realloc(runs, ncap * sizeof *runs);

        if (grown == NULL)
            return 0;
        runs = grown;
        cap = ncap;
    }
    return 1;
}

/* Whatever the executor asks: never root, never below min_uid, never a forbidden uid. */
static int identity_allowed(uint32_t uid, uint32_t gid)
{
    if (uid == 0 || gid == 0 || uid < min_uid || uid == (uint32_t) -1 || gid == (uint32_t) -1)
        return 0;
    for (int i = 0; i < n_forbidden; i++)
        if (uid == forbidden[i])
            return 0;
    return 1;
}

static void spawn(const struct req_spawn *rq, const char *strings, size_t len,
                  const int *fds, int nfds)
{
    const char *home = strings, *argv0, *tz;
    struct clone_args ca = {.flags = CLONE_PIDFD | CLONE_NEWPID | CLONE_NEWNS,
                            .exit_signal = SIGCHLD};
    int pidfd = -1;
    long pid;

    /* three NUL-terminated strings, nothing else */
    argv0 = memchr(home, 0, len) ? home + strlen(home) + 1 : NULL;
    tz = argv0 && argv0 < strings + len && memchr(argv0, 0, (size_t) (strings + len - argv0))
        ? argv0 + strlen(argv0) + 1 : NULL;
    if (tz == NULL || tz >= strings + len || !memchr(tz, 0, (size_t) (strings + len - tz))
        || (nfds != 4 && nfds != 5) || rq->tmp_bytes < 4096) {
        send_reply(OP_SPAWNED, rq->id, -1, EINVAL, -1);
        return;
    }
    if (!identity_allowed(rq->uid, rq->gid)) {
        send_reply(OP_SPAWNED, rq->id, -1, EPERM, -1);
        return;
    }
    if (rq->netns >= (uint32_t) (n_netns ? n_netns : 1)) {
        send_reply(OP_SPAWNED, rq->id, -1, ENONET, -1);
        return;
    }
    if (nfds == 5) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t) fds[4];
    }
    ca.pidfd = (uint64_t) (uintptr_t) &pidfd;
    if (!grow_runs()) {
        send_reply(OP_SPAWNED, rq->id, -1, ENOMEM, -1);
        return;
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
    runs[nruns++] = (struct live) {.pid = (pid_t) pid, .id = rq->id, .is_open = 0};
    send_reply(OP_SPAWNED, rq->id, (int32_t) pid, 0, pidfd);
    close(pidfd);
}

/* The child of OPEN: drop to the account, open the path with its rights, regular files only. */
__attribute__((noreturn))
static void open_as_user(const struct req_spawn *rq, const char *path)
{
    struct stat st;
    char proc[64];
    int fd, opened;

    drop_privileges((uid_t) rq->uid, (gid_t) rq->gid);   /* on failure: exit 127, see reap */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);     /* the account's processes can't ptrace it */
    /* O_PATH first: nothing of a device or FIFO is opened before its type is known */
    fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) {
        send_reply(OP_OPENED, rq->id, -1, errno, -1);
        _exit(0);
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        send_reply(OP_OPENED, rq->id, -1, ENOEXEC, -1);
        _exit(0);
    }
    /* reopen through the O_PATH fd: the same inode, now read-only if the user may read it */
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    opened = open(proc, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (opened < 0) {
        send_reply(OP_OPENED, rq->id, -1, errno, -1);
        _exit(0);
    }
    send_reply(OP_OPENED, rq->id, 0, 0, opened);
    _exit(0);
}

static void open_path(const struct req_spawn *rq, const char *path, size_t len)
{
    pid_t pid;

    if (len == 0 || path[0] != '/' || memchr(path, 0, len) == NULL) {
        send_reply(OP_OPENED, rq->id, -1, EINVAL, -1);
        return;
    }
    if (!identity_allowed(rq->uid, rq->gid)) {
        send_reply(OP_OPENED, rq->id, -1, EPERM, -1);
        return;
    }
    if (!grow_runs()) {
        send_reply(OP_OPENED, rq->id, -1, ENOMEM, -1);
        return;
    }
    pid = fork();
    if (pid == 0) {
        sigset_t none;

        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        open_as_user(rq, path);
    }
    if (pid < 0) {
        send_reply(OP_OPENED, rq->id, -1, errno, -1);
        return;
    }
    runs[nruns++] = (struct live) {.pid = pid, .id = rq->id, .is_open = 1};
}

static void kill_run(uint32_t id)
{
    for (size_t i = 0; i < nruns; i++)
        if (runs[i].id == id && !runs[i].is_open)
            kill(runs[i].pid, SIGKILL);     /* not reaped yet: the pid is still ours */
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

                for (int i = 0; i < count; i++) {
                    int fd;

                    memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                    if (nfds < MAX_FDS)
                        fds[nfds++] = fd;
                    else
                        close(fd);
                }
            }
        if ((size_t) n >= sizeof rq && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            memcpy(&rq, buf, sizeof rq);
            if (rq.op == OP_SPAWN)
                spawn(&rq, buf + sizeof rq, (size_t) n - sizeof rq, fds, nfds);
            else if (rq.op == OP_KILL)
                kill_run(rq.id);
            else if (rq.op == OP_OPEN)
                open_path(&rq, buf + sizeof rq, (size_t) n - sizeof rq);
        } else if ((size_t) n >= 2 * sizeof(uint32_t)) {
            memcpy(&rq, buf, 2 * sizeof(uint32_t));
            if (rq.op == OP_SPAWN || rq.op == OP_OPEN)
                send_reply(rq.op == OP_SPAWN ? OP_SPAWNED : OP_OPENED, rq.id, -1, EINVAL, -1);
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
}

/* Reap every exited run and report its wait status. Its PID namespace died with it. */
static void reap_children(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);

        if (pid <= 0)
            return;
        for (size_t i = 0; i < nruns; i++)
            if (runs[i].pid == pid) {
                if (!runs[i].is_open)
                    send_reply(OP_EXITED, runs[i].id, pid, status, -1);
                else if (status != 0)   /* it died before replying (drop failed, killed) */
                    send_reply(OP_OPENED, runs[i].id, -1, EPERM, -1);
                runs[i] = runs[--nruns];
                break;
            }
    }
}

/* Why the spawner can't serve, on stderr (the executor's log); the executor then refuses
 * to start, having read EOF instead of READY. */
static int start_failed(const char *step)
{
    fprintf(stderr, "mailexec-spawner: cannot start: %s: %s\n", step, strerror(errno));
    return 1;
}

static int parse_ulong(const char *text, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(text, &end, 10);
    return errno == 0 && *text != '\0' && *text != '-' && *end == '\0';
}

int main(int argc, char **argv)
{
    sigset_t chld;
    struct pollfd pfd[2];
    unsigned long parent = 0, value;

    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc || !parse_ulong(argv[i + 1], &value))
            return 2;
        if (!strcmp(argv[i], "--sock") && value >= 3 && value < 1u << 20)
            SOCK_FD = (int) value;
        else if (!strcmp(argv[i], "--parent") && value >= 1)
            parent = value;
        else if (!strcmp(argv[i], "--netns") && n_netns < MAX_NETNS && value >= 3)
            netns_fds[n_netns++] = (int) value;
        else if (!strcmp(argv[i], "--min-uid") && value >= 1)
            min_uid = value;
        else if (!strcmp(argv[i], "--forbid-uid") && n_forbidden < MAX_FORBIDDEN)
            forbidden[n_forbidden++] = value;
        else
            return 2;
    }
    if (SOCK_FD < 0 || parent == 0)
        return 2;
    /* The executor's pid: if it died before PDEATHSIG was armed, we were re-parented and
     * getppid() differs. (Comparing with 1 would be wrong: in a container the executor
     * itself is pid 1.) */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != (pid_t) parent)
        return start_failed("pdeathsig");
    /* fds 0-2 must be taken, so that received fds never land there (dup2 in child) */
    for (;;) {
        int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

        if (fd < 0)
            return start_failed("open /dev/null");
        if (fd >= 3) {
            close(fd);
            break;
        }
    }
    if (fcntl(SOCK_FD, F_SETFD, FD_CLOEXEC) != 0)
        return start_failed("socket");
    for (int i = 0; i < n_netns; i++)
        if (fcntl(netns_fds[i], F_SETFD, FD_CLOEXEC) != 0)
            return start_failed("netns fd");
    if (n_netns > 0 && setns(netns_fds[0], CLONE_NEWNET) != 0)
        return start_failed("setns (network namespace; needs CAP_SYS_ADMIN)");
    if (spawner_mounts() != 0)
        return start_failed("mount namespace and /run (needs CAP_SYS_ADMIN and no "
                            "AppArmor/seccomp profile that forbids mount)");
    SELF_PIDFD = (int) syscall(SYS_pidfd_open, getpid(), 0);
    if (SELF_PIDFD < 0 || fcntl(SELF_PIDFD, F_SETFD, FD_CLOEXEC) != 0)
        return start_failed("pidfd_open");
    /* The set-up is done: from here on it holds only what runs need (capset.h). */
    if (narrow_capabilities(SPAWNER_CAPS) != 0)
        return start_failed("narrowing its capabilities (needs CAP_SETPCAP for "
                            "PR_CAPBSET_DROP)");
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0)
        return start_failed("sigprocmask");
    pfd[0].fd = SOCK_FD;
    pfd[0].events = POLLIN;
    pfd[1].fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    pfd[1].events = POLLIN;
    if (pfd[1].fd < 0)
        return start_failed("signalfd");
    send_reply(OP_READY, 0, (int32_t) getpid(), 0, -1);
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
