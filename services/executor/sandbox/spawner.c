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
 *      spawner_mounts()); each slot copies it and adds its own /proc, each run
 *      its own /tmp and /dev/shm. Insecure-mode programs can therefore not live
 *      under /run.
 *
 *      Slots (slot.h): runs do not get a new PID and mount namespace each (that
 *      cost ~0.17 ms of CPU per run); the spawner keeps a pool of slots, each
 *      the root pid 1 of its own PID and mount namespace, and gives every run
 *      to an idle one (a new one when none is idle, so there are as many as
 *      runs were ever in flight at once). A slot runs one program at a time and
 *      kills every process of its namespace and unmounts the run's /tmp,
 *      /dev/shm and home before it reports the run ended and takes another.
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
 *      a run seeing what an earlier one left in the    slot.h
 *        same slot
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
 *             [cgroup v2 directory]. Checked here, then forwarded as is to an
 *             idle slot, which clone3s the program [CLONE_INTO_CGROUP]
 *             (slot.h); killing the slot's pid 1 ends every process of the run.
 *      KILL:  struct req_spawn with only op and id: SIGKILL the pid 1 of the
 *             slot running that run, if it still is (timeouts); the slot is
 *             not reused.
 *      OPEN:  struct req_spawn with op, id, uid, gid, then one NUL-terminated
 *             absolute path (insecure mode's program): a forked child drops to
 *             uid/gid (same refusals as SPAWN) and opens it read-only with
 *             O_NONBLOCK|O_NOCTTY, so the account's own rights decide (a file in
 *             a directory it can't search stays closed to it), and refuses
 *             anything but a regular file (a device node is never opened as
 *             root, nor as the user: fstat comes after an O_PATH open).
 *      Replies (struct reply):
 *        SPAWNED id pid 0    + the slot's pidfd via SCM_RIGHTS (pid: the slot's
 *                              pid 1; SIGKILL to it ends the run);
 *        SPAWNED id -1 errno   nothing runs: EPERM = refused identity,
 *                              ENONET = no such network namespace, else
 *                              clone3's own error (no slot could be made);
 *        EXITED  id pid wait-status, once every process of the run is gone: the
 *               program's own wait status when its slot reported the run done,
 *               else the slot's pid 1's (killed, or a step before the program
 *               failed: the reason is on the status pipe). The program's own
 *               wait status is on the status pipe too ("status N").
 *        OPENED  id 0 0 + the fd, or id -1 errno (ENOEXEC: not a regular file);
 *               sent by the opening child itself.
 *        READY   0 pid 0, once, when the set-up is done; a spawner that can't set
 *               up says why on stderr and exits, and the executor refuses to start.
 *
 * DEATH, EITHER SIDE
 *      EOF on the socket (executor gone or closing): SIGKILL every slot and
 *      exit. PR_SET_PDEATHSIG kills the spawner with the executor; each slot's
 *      pid 1 has PR_SET_PDEATHSIG(SIGKILL) armed on the spawner (slot.h), so
 *      the death of the spawner, by any cause, SIGKILLs every slot - and a PID
 *      namespace dies with its init. There is no window in which a program
 *      survives both: the slot checks, after arming, that the spawner is still
 *      alive (its pidfd), before it takes any run.
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

#include "slot.h"           /* needs struct req_spawn */

/* An OPEN child (insecure mode), until it has replied and been reaped. */
struct opening { pid_t pid; uint32_t id; };

/* A run slot (slot.h): busy while it runs request `id`. */
struct slot { pid_t pid; int sock, pidfd, busy, doomed; uint32_t id; };

static struct opening *openings;
static size_t nopenings, openings_cap;
static struct slot *slots;
static size_t nslots, slots_cap;
static int SOCK_FD = -1;
static int SELF_PIDFD = -1;
static int netns_fds[MAX_NETNS];
static int n_netns;
static unsigned long min_uid = 1;
static unsigned long forbidden[MAX_FORBIDDEN];
static int n_forbidden;

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
    for (size_t i = 0; i < nslots; i++)
        kill(slots[i].pid, SIGKILL);    /* pid 1 of its namespace: its run dies with it */
    for (size_t i = 0; i < nopenings; i++)
        kill(openings[i].pid, SIGKILL);
    _exit(code);
}

/* Room for one more element in an array of `size`-byte elements; 0 when out of memory. */
static int grow(void **array, size_t used, size_t *cap, size_t size)
{
    if (used == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        void *grown = realloc(*array, ncap * size);

        if (grown == NULL)
            return 0;
        *array = grown;
        *cap = ncap;
    }
    return 1;
}

/* A new, idle slot (slot.h), appended to slots[]; its index, or -1 with errno set. */
static int new_slot(void)
{
    struct clone_args ca = {.flags = CLONE_PIDFD | CLONE_NEWPID | CLONE_NEWNS,
                            .exit_signal = SIGCHLD};
    int pair[2], pidfd = -1;
    long pid;

    if (!grow((void **) &slots, nslots, &slots_cap, sizeof *slots)) {
        errno = ENOMEM;
        return -1;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        return -1;
    ca.pidfd = (uint64_t) (uintptr_t) &pidfd;
    pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0) {
        close(pair[0]);
        slot_main(&(struct slot_env) {.sock = pair[1], .spawner_pidfd = SELF_PIDFD,
                                      .netns_fds = netns_fds, .n_netns = n_netns});
    }
    close(pair[1]);
    if (pid < 0) {
        int err = errno;

        close(pair[0]);
        errno = err;
        return -1;
    }
    slots[nslots] = (struct slot) {.pid = (pid_t) pid, .sock = pair[0], .pidfd = pidfd};
    return (int) nslots++;
}

/* An idle slot's index, made when none is idle; -1 with errno set. */
static int idle_slot(void)
{
    for (size_t i = 0; i < nslots; i++)
        if (!slots[i].busy)
            return (int) i;
    return new_slot();
}

/* Forward a checked request to slot `i`; 0, or -1 with errno set (the slot is dead). */
static int forward(int i, const char *req, size_t len, const int *fds, int nfds)
{
    union { char buf[CMSG_SPACE(SLOT_MAX_FDS * sizeof(int))]; struct cmsghdr align; } u;
    struct iovec iov = {(void *) req, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = CMSG_SPACE((size_t) nfds * sizeof(int))};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t) nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t) nfds * sizeof(int));
    /* an idle slot is blocked in recvmsg: the socket has room, this never waits long */
    while (sendmsg(slots[i].sock, &msg, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            return -1;
    return 0;
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

static void spawn(const struct req_spawn *rq, const char *req, size_t len,
                  const int *fds, int nfds)
{
    const char *strings = req + sizeof *rq, *home = strings, *argv0, *tz;
    size_t slen = len - sizeof *rq;
    int i;

    /* three NUL-terminated strings, nothing else */
    argv0 = memchr(home, 0, slen) ? home + strlen(home) + 1 : NULL;
    tz = argv0 && argv0 < strings + slen && memchr(argv0, 0, (size_t) (strings + slen - argv0))
        ? argv0 + strlen(argv0) + 1 : NULL;
    if (tz == NULL || tz >= strings + slen || !memchr(tz, 0, (size_t) (strings + slen - tz))
        || (nfds != 4 && nfds != 5) || rq->tmp_bytes < 4096 || len > SLOT_MAX_MSG) {
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
    /* a slot that died while idle fails the send: end it, try one new slot */
    for (int attempt = 0; ; attempt++) {
        i = idle_slot();
        if (i < 0) {
            send_reply(OP_SPAWNED, rq->id, -1, errno, -1);
            return;
        }
        if (forward(i, req, len, fds, nfds) == 0)
            break;
        kill(slots[i].pid, SIGKILL);
        slots[i].busy = slots[i].doomed = 1;   /* never used again; reap_children drops it */
        if (attempt == 1) {
            send_reply(OP_SPAWNED, rq->id, -1, EAGAIN, -1);
            return;
        }
    }
    slots[i].busy = 1;
    slots[i].id = rq->id;
    send_reply(OP_SPAWNED, rq->id, (int32_t) slots[i].pid, 0, slots[i].pidfd);
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
    if (!grow((void **) &openings, nopenings, &openings_cap, sizeof *openings)) {
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
    openings[nopenings++] = (struct opening) {.pid = pid, .id = rq->id};
}

/* A timeout or a cancelled run: SIGKILL its slot's pid 1, and with it the namespace;
 * reap_children reports the run ended. A run already reported ended is left alone. */
static void kill_run(uint32_t id)
{
    for (size_t i = 0; i < nslots; i++)
        if (slots[i].busy && slots[i].id == id)
            kill(slots[i].pid, SIGKILL);    /* not reaped yet: the pid is still ours */
}

/* Every "done" a slot has sent: the run ended and everything of it is gone. */
static void slot_replies(size_t i)
{
    struct slot_done done;

    while (recv(slots[i].sock, &done, sizeof done, MSG_DONTWAIT) == (ssize_t) sizeof done)
        if (done.op == OP_DONE && slots[i].busy && !slots[i].doomed && done.id == slots[i].id) {
            slots[i].busy = 0;
            send_reply(OP_EXITED, done.id, slots[i].pid, done.status, -1);
        }
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
        int fds[MAX_FDS], nfds;
        struct req_spawn rq;
        ssize_t n = recvmsg(SOCK_FD, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 1 : 0;
        if (n == 0)
            return 0;
        nfds = received_fds(&msg, fds, MAX_FDS);
        if ((size_t) n >= sizeof rq && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            memcpy(&rq, buf, sizeof rq);
            if (rq.op == OP_SPAWN)
                spawn(&rq, buf, (size_t) n, fds, nfds);
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

/* Reap every exited slot and OPEN child. A slot that dies mid-run (killed, or a step
 * before the program failed) ends that run: its PID namespace died with it. */
static void reap_children(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);

        if (pid <= 0)
            return;
        for (size_t i = 0; i < nslots; i++)
            if (slots[i].pid == pid) {
                slot_replies(i);        /* a "done" it sent before dying counts */
                if (slots[i].busy && !slots[i].doomed)
                    send_reply(OP_EXITED, slots[i].id, pid, status, -1);
                close(slots[i].sock);
                close(slots[i].pidfd);
                slots[i] = slots[--nslots];
                break;
            }
        for (size_t i = 0; i < nopenings; i++)
            if (openings[i].pid == pid) {
                if (status != 0)    /* it died before replying (drop failed, killed) */
                    send_reply(OP_OPENED, openings[i].id, -1, EPERM, -1);
                openings[i] = openings[--nopenings];
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
    struct pollfd *pfd = NULL;
    size_t pfd_cap = 0;
    int sigfd;
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
    sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0)
        return start_failed("signalfd");
    send_reply(OP_READY, 0, (int32_t) getpid(), 0, -1);
    for (;;) {
        size_t n = nslots;

        if (pfd_cap < n + 2) {
            pfd_cap = (n + 2) * 2;
            pfd = realloc(pfd, pfd_cap * sizeof *pfd);
            if (pfd == NULL)
                kill_all_and_exit(1);
        }
        pfd[0] = (struct pollfd) {.fd = SOCK_FD, .events = POLLIN};
        pfd[1] = (struct pollfd) {.fd = sigfd, .events = POLLIN};
        for (size_t i = 0; i < n; i++)
            pfd[i + 2] = (struct pollfd) {.fd = slots[i].sock, .events = POLLIN};
        if (poll(pfd, (nfds_t) (n + 2), -1) < 0) {
            if (errno == EINTR)
                continue;
            kill_all_and_exit(1);
        }
        /* "done" first: a slot that finished and then died still counts as finished */
        for (size_t i = 0; i < n; i++)
            if (pfd[i + 2].revents)
                slot_replies(i);
        if (pfd[1].revents) {
            struct signalfd_siginfo info;

            while (read(sigfd, &info, sizeof info) > 0)
                ;
            reap_children();
        }
        if (pfd[0].revents && !serve_requests())
            kill_all_and_exit(0);
    }
}
