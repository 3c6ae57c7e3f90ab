/*
 * NAME
 *      slot.h - a run slot: the persistent pid 1 of one PID and mount namespace,
 *               which runs one program at a time and wipes everything between runs
 *
 * WHY SLOTS
 *      A PID namespace and a copy of the mount namespace per run cost ~0.17 ms of
 *      CPU per run on top of fork+exec (clone3(NEWPID|NEWNS), a second process
 *      as the run's pid 1, their teardown), measured on this 2-core machine with
 *      /bin/true: 0.58 ms plain, 0.82 ms with the per-run namespaces, 0.67 ms
 *      with a slot reused (fresh /tmp and /dev/shm per run). The spawner keeps
 *      as many slots as runs are in flight (spawner.c) and hands each run to a
 *      free one; what makes a run private is redone per run, what is the same
 *      for every run is made once per slot.
 *
 * TRUSTS
 *      The spawner (spawner.c), its parent: it made this process with
 *      clone3(CLONE_NEWPID | CLONE_NEWNS) from its own mount namespace ("/"
 *      private, /run and /var/run an empty read-only tmpfs), and it checks every
 *      request before forwarding it here (uid/gid allowed, network index known,
 *      strings NUL-terminated, fd count). Nothing else: the slot reads nothing
 *      but its socket to the spawner, and every privileged step of a run
 *      happens before the program's first instruction.
 *
 * DEFENDS AGAINST                                  (test that shows it)
 *      a run seeing what an earlier run in the      test_sandbox: test_a_reused_slot_
 *        same slot left: files in /tmp, /dev/shm,     shows_nothing_of_the_previous_run
 *        a process (setsid, double fork), its
 *        home bound under /tmp, an open fd
 *      a program outliving its run (escapees are    tests/security/test_hostile.py:
 *        killed with kill(-1) from this pid 1,         test_setsid_double_fork_escapee_is_killed
 *        before the run is reported finished)
 *      a program outliving the executor or the      test_containment: test_killing_the_
 *        spawner: PDEATHSIG armed on the spawner,      executor_leaves_no_program
 *        checked against its pidfd; a PID
 *        namespace dies with its init
 *      a program signalling or tracing its pid 1    test_containment: test_proc_shows_only_
 *        (root, not dumpable, and a namespace's init    the_run_and_umask_is_077
 *        ignores signals it has no handler for)
 *
 * ONE RUN (request: struct req_spawn, home, argv0, TZ; fds exec, stdin,
 * output, status[, cgroup]; any failure before the program starts writes
 * "<step> <errno>" to the status fd and ends the slot: the spawner reports the
 * run ended and makes a new slot when one is needed)
 *      1. an empty size-limited tmpfs on /tmp and /dev/shm (the one the slot's
 *         last run left empty, else a fresh one); the account's home, if it lies
 *         under them and the account can reach it on the host, bound back at its
 *         path (child_recipe.h, run_mounts());
 *      2. clone3 the program (into the run's cgroup when there is one); it does
 *         child_recipe.h's program steps (setns for a network other than the
 *         shared empty one, setsid, rlimits, drop to the account, fexecve);
 *      3. reaps whatever dies in the namespace until the program ends, writes
 *         "status <wait status>" to the status fd and closes it;
 *      4. kill(-1, SIGKILL) (from a namespace's init: every process in it but
 *         itself) and reaps until none is left;
 *      5. unmounts the home, and /tmp and /dev/shm unless they are empty (kept
 *         for the next run then, their times reset: a mount and an unmount less
 *         per run), and tells the spawner "done <id> <wait status>". Only then is
 *         the slot given another run.
 *      A timeout or a cancelled run is a SIGKILL of the slot itself (spawner.c
 *      kill_run): the namespace dies with it, and the next run gets a new slot.
 *
 * WHAT A RUN CAN TELL ABOUT EARLIER RUNS
 *      Pid numbers (and the kept tmpfs's inode numbers) grow across the runs of
 *      a slot, so a program can count the processes (files) started in its slot
 *      before it. Nothing else of them: no file, process, mount or fd survives
 *      step 5.
 */
#ifndef MAILEXEC_SLOT_H
#define MAILEXEC_SLOT_H

#include <errno.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child_recipe.h"

#define OP_DONE 5               /* slot -> spawner: struct slot_done */
#define SLOT_MAX_FDS 5
#define SLOT_MAX_MSG 8192

struct slot_done {
    uint32_t op, id;
    int32_t status, reserved;
};

/* What a slot is given at its start (copied from the spawner before clone3). */
struct slot_env {
    int sock;                   /* this slot's end of its socketpair with the spawner */
    int spawner_pidfd;          /* readable once the spawner has exited */
    const int *netns_fds;       /* index -> open namespace fd (index 0: inherited) */
    int n_netns;
};

/* One request as the spawner forwards it (it has checked everything already). */
struct slot_request {
    const struct req_spawn *rq;
    const char *home, *argv0, *tz;
    int fds[SLOT_MAX_FDS];      /* exec, stdin, output, status, cgroup (-1 when none) */
};

/* The program's process: pipes on 0-2, its network, then child_recipe.h's steps. */
__attribute__((noreturn))
static void slot_program(const struct slot_env *env, const struct slot_request *q)
{
    char tzvar[300], *argv[2] = {(char *) q->argv0, NULL};
    char *envp[3] = {tzvar, "AGENT=mailexec", NULL};
    const struct req_spawn *rq = q->rq;

    if (dup2(q->fds[1], 0) < 0 || dup2(q->fds[2], 1) < 0 || dup2(q->fds[2], 2) < 0)
        fail("dup2", errno);
    if ((size_t) snprintf(tzvar, sizeof tzvar, "TZ=%s", q->tz) >= sizeof tzvar)
        fail("tz", ENAMETOOLONG);
    if (rq->netns != 0 && setns(env->netns_fds[rq->netns], CLONE_NEWNET) != 0)
        fail("setns", errno);
    become_program(&(struct child_recipe) {
        .uid = (uid_t) rq->uid, .gid = (gid_t) rq->gid,
        .limits = {.cpu = rq->cpu, .as = rq->as, .nproc = rq->nproc, .fsize = rq->fsize,
                   .nofile = rq->nofile},
        .home = q->home, .exec_fd = q->fds[0], .argv = argv, .envp = envp,
    });
}

/* Kill every process of this namespace but ourselves, and reap them all. */
static void slot_sweep(void)
{
    for (;;) {
        kill(-1, SIGKILL);
        if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD)
            return;
    }
}

/* One run, steps 1-5 of the header; returns the program's wait status. Failures before
 * the program starts end the slot (fail()). */
static int slot_run(const struct slot_env *env, const struct slot_request *q,
                    struct run_mounts *mounts)
{
    struct clone_args ca = {.exit_signal = SIGCHLD};
    char msg[32];
    int status = 0, len;
    long program;

    status_fd = q->fds[3];
    refuse_root_ids(q->rq->uid, q->rq->gid);
    run_mounts(mounts, q->rq->tmp_bytes, q->home, (uid_t) q->rq->uid, (gid_t) q->rq->gid);
    if (q->fds[4] >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t) q->fds[4];
    }
    program = syscall(SYS_clone3, &ca, sizeof ca);
    if (program == 0)
        slot_program(env, q);
    if (program < 0)
        fail("fork", errno);
    for (int i = 0; i < SLOT_MAX_FDS; i++)  /* the program's now; status stays ours */
        if (i != 3 && q->fds[i] >= 0)
            close(q->fds[i]);
    for (;;) {
        int any;
        pid_t pid = waitpid(-1, &any, 0);

        if (pid == program) {
            status = any;
            break;
        }
        if (pid < 0 && errno != EINTR)
            fail("wait", errno);    /* never seen: the program is our child */
    }
    len = snprintf(msg, sizeof msg, "status %d\n", status);
    if (write(status_fd, msg, (size_t) len) != len)
        _exit(126);
    close(status_fd);
    status_fd = -1;
    slot_sweep();
    if (undo_run_mounts(mounts) != 0)
        _exit(125);     /* the slot can't be made clean again: the spawner replaces it */
    return status;
}

/* The fds a received message carries (SCM_RIGHTS), at most `max` into `fds` (any more
 * are closed); returns how many. Shared by the spawner and its slots. */
static int received_fds(struct msghdr *msg, int *fds, int max)
{
    int n = 0;

    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int) ((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

            for (int i = 0; i < count; i++) {
                int fd;

                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (n < max)
                    fds[n++] = fd;
                else
                    close(fd);
            }
        }
    return n;
}

/* Read one forwarded request; 0 on EOF (the spawner is gone or closing). */
static int slot_receive(int sock, char *buf, size_t size, struct slot_request *q)
{
    union { char buf[CMSG_SPACE(SLOT_MAX_FDS * sizeof(int))]; struct cmsghdr align; } u;
    struct iovec iov = {buf, size};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    int nfds;
    ssize_t n;

    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0;
    for (int i = 0; i < SLOT_MAX_FDS; i++)
        q->fds[i] = -1;
    nfds = received_fds(&msg, q->fds, SLOT_MAX_FDS);
    /* the spawner sends exactly this shape; anything else means it is not the spawner */
    if ((size_t) n < sizeof *q->rq || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || nfds < 4)
        _exit(124);
    q->rq = (const struct req_spawn *) buf;
    q->home = buf + sizeof *q->rq;
    q->argv0 = q->home + strlen(q->home) + 1;
    q->tz = q->argv0 + strlen(q->argv0) + 1;
    return 1;
}

/* The slot's whole life: set up once, then one run per request until EOF. */
__attribute__((noreturn))
static void slot_main(const struct slot_env *env)
{
    struct pollfd gone = {.fd = env->spawner_pidfd, .events = POLLIN};
    _Alignas(struct req_spawn) char buf[SLOT_MAX_MSG + 1];
    static struct run_mounts mounts;    /* what the slot keeps mounted between runs */
    int keep[MAX_KEEP_FDS], nkeep = 0;
    sigset_t none;

    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);   /* errors for KILL/STOP and RT internals are harmless */
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Armed first, then make sure the spawner did not die before: from here on its
     * death kills this pid 1 and with it every process of the namespace. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        _exit(123);
    if (poll(&gone, 1, 0) != 0)
        _exit(123);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* nothing of the spawner's but this slot's socket and the network namespaces */
    keep[nkeep++] = env->sock;
    for (int i = 0; i < env->n_netns && nkeep < MAX_KEEP_FDS; i++)
        keep[nkeep++] = env->netns_fds[i];
    close_fds_except(keep, nkeep);
    if (slot_mounts() != 0)
        _exit(122);
    for (;;) {
        struct slot_request q;
        struct slot_done done = {.op = OP_DONE};

        memset(buf, 0, sizeof buf);     /* the strings end in a NUL whatever was sent */
        if (!slot_receive(env->sock, buf, SLOT_MAX_MSG, &q))
            _exit(0);
        done.id = q.rq->id;
        done.status = slot_run(env, &q, &mounts);
        if (send(env->sock, &done, sizeof done, MSG_NOSIGNAL) != (ssize_t) sizeof done)
            _exit(0);
    }
}

#endif
