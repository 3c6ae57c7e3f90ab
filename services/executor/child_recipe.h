/*
 * NAME
 *      child_recipe.h - the last steps before a delivery program runs
 *
 * SYNOPSIS
 *      #define _GNU_SOURCE
 *      #include "child_recipe.h"
 *
 *      status_fd = N;                          (where fail() reports)
 *      refuse_root_ids(uid, gid);              (as early as the caller can)
 *      run_child_recipe(&(struct child_recipe){...});      (never returns)
 *
 * DESCRIPTION
 *      The one copy of the child recipe (Postfix's pipe_command.c) shared by
 *      both ways the executor starts a program: launcher.c (one exec of
 *      mailexec-launch per run) and spawner.c (the clone3()d child of the
 *      persistent spawner). A change to how a program is started - above all a
 *      security fix - is made here and holds for both paths.
 *
 *      Both .c files include it with #include "child_recipe.h", which the
 *      compiler looks up next to the including file: building either from its
 *      own directory needs no -I. Ship it wherever the .c files go
 *      (pyproject.toml package-data); services/executor/sandbox.py rebuilds a
 *      binary when this header is newer than it, as it does for the .c file.
 *
 *      run_child_recipe(), entered as root, in this order:
 *
 *      1. refuses uid 0 and gid 0 (again: the caller should already have);
 *      2. setsid(2): own session and process group (pgid == pid);
 *      3. lowers the resource limits given (RLIMIT_CPU soft S, hard S+1 so
 *         the program sees SIGXCPU before SIGKILL; AS, NPROC, FSIZE, NOFILE
 *         soft == hard; -1 leaves one alone) and RLIMIT_CORE to 0 - before
 *         setuid, because the kernel checks NPROC at setuid time;
 *      4. reads the exec fd's first two bytes (as root: the executor opened
 *         it) to know whether it is a "#!" script;
 *      5. setgroups(0, NULL), setgid(gid), setuid(uid) - all of real,
 *         effective and saved ids - then checks the ids, that no
 *         supplementary group is left and that setuid(0) and setgid(0) fail;
 *      6. prctl(PR_SET_NO_NEW_PRIVS): no set-uid/set-gid/file-capability gain
 *         through exec;
 *      7. chdir(home) as the user, else chdir("/tmp");
 *      8. closes every fd above 2 except the exec fd, the keep fd and the
 *         status fd (which the caller made close-on-exec);
 *      9. leaves the exec fd open across the exec only for "#!" scripts (the
 *         interpreter reopens /dev/fd/N as the user), and the keep fd open;
 *     10. fexecve(exec fd, argv, envp).
 *
 *      Any failure writes "<step> <errno>\n" to status_fd and exits 127: it
 *      never shows up as program output. On a successful exec the kernel
 *      closes the status fd, so the executor reads EOF with no data.
 *
 * GUARANTEES
 *      The program never runs with uid 0 or gid 0, with supplementary groups,
 *      with a way back to root (checked), or able to gain privileges by exec;
 *      it leads a new session and process group and holds only fds 0-2 (plus
 *      the script's fd or the keep fd when asked).
 *
 * DOES NOT
 *      Build the environment (envp is the caller's: launcher.c passes its
 *      own, which sandbox.py reduces to TZ and AGENT; spawner.c builds
 *      exactly those two), set up fds 0-2, join a cgroup or a namespace,
 *      reset signals, or look up users (numeric ids only).
 *
 *      Every function here is static: each including program gets its own
 *      copy, and -Wall -Werror fails the build on one it no longer uses.
 */
#ifndef MAILEXEC_CHILD_RECIPE_H
#define MAILEXEC_CHILD_RECIPE_H

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Where fail() reports; -1 (nowhere) until the caller has one. */
static int status_fd = -1;

/* Report a failed step to the executor and stop; never touches fds 0-2. */
__attribute__((noreturn))
static void fail(const char *step, int err)
{
    char msg[128];
    int len = snprintf(msg, sizeof msg, "%s %d\n", step, err);

    if (status_fd >= 0 && len > 0) {
        ssize_t ignored = write(status_fd, msg, (size_t) len);
        (void) ignored;
    }
    _exit(127);
}

static void set_cloexec(int fd, int on, const char *step)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags < 0)
        fail(step, errno);
    flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    if (fcntl(fd, F_SETFD, flags) != 0)
        fail(step, errno);
}

/* uid 0 / gid 0 never; nor ids that don't fit uid_t / gid_t or are -1. */
static void refuse_root_ids(unsigned long long uid, unsigned long long gid)
{
    if (uid == 0 || gid == 0)
        fail("refuse-root", EPERM);
    if (uid >= (uid_t) -1 || gid >= (gid_t) -1)
        fail("uid", EINVAL);
}

struct child_limits {
    int64_t cpu, as, nproc, fsize, nofile;      /* -1: leave alone */
};

/* Soft limit `soft`, hard limit soft + extra_hard; nothing when soft < 0. */
static void lower_limit(int resource, int64_t soft, rlim_t extra_hard, const char *step)
{
    struct rlimit lim = {.rlim_cur = (rlim_t) soft, .rlim_max = (rlim_t) soft + extra_hard};

    if (soft >= 0 && setrlimit(resource, &lim) != 0)
        fail(step, errno);
}

static void lower_limits(const struct child_limits *limits)
{
    lower_limit(RLIMIT_CPU, limits->cpu, 1, "rlimit-cpu");
    lower_limit(RLIMIT_AS, limits->as, 0, "rlimit-as");
    lower_limit(RLIMIT_NPROC, limits->nproc, 0, "rlimit-nproc");
    lower_limit(RLIMIT_FSIZE, limits->fsize, 0, "rlimit-fsize");
    lower_limit(RLIMIT_NOFILE, limits->nofile, 0, "rlimit-nofile");
    lower_limit(RLIMIT_CORE, 0, 0, "rlimit-core");
}

/* setgroups, setgid, setuid (real, effective, saved), then prove there is no way back. */
static void drop_privileges(uid_t uid, gid_t gid)
{
    uid_t ru, eu, su;
    gid_t rg, eg, sg;

    if (setgroups(0, NULL) != 0)
        fail("setgroups", errno);
    if (setgid(gid) != 0)
        fail("setgid", errno);
    if (setuid(uid) != 0)
        fail("setuid", errno);
    if (getresuid(&ru, &eu, &su) != 0 || ru != uid || eu != uid || su != uid)
        fail("verify-uid", EPERM);
    if (getresgid(&rg, &eg, &sg) != 0 || rg != gid || eg != gid || sg != gid)
        fail("verify-gid", EPERM);
    if (getgroups(0, NULL) != 0)
        fail("verify-groups", EPERM);
    if (setuid(0) == 0 || setgid(0) == 0)
        fail("verify-drop", EPERM);
}

/* Close fds >= 3 except the listed ones (each may be -1). */
static void close_other_fds(int keep_a, int keep_b, int keep_c)
{
    int keep[3] = {keep_a, keep_b, keep_c};
    unsigned int low = 3;

    /* sort the (at most three) fds to keep */
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (keep[j] < keep[i]) {
                int t = keep[i];
                keep[i] = keep[j];
                keep[j] = t;
            }
    for (int i = 0; i < 3; i++) {
        if (keep[i] < (int) low)
            continue;
        if ((unsigned int) keep[i] > low
            && syscall(SYS_close_range, low, (unsigned int) keep[i] - 1, 0) != 0)
            fail("close_range", errno);
        low = (unsigned int) keep[i] + 1;
    }
    if (syscall(SYS_close_range, low, ~0U, 0) != 0)
        fail("close_range", errno);
}

struct child_recipe {
    uid_t uid;
    gid_t gid;
    struct child_limits limits;
    const char *home;
    int exec_fd;                /* the program, opened by the executor */
    int keep_fd;                /* -1, or an fd the program must inherit */
    char *const *argv;
    char *const *envp;
};

__attribute__((noreturn))
static void run_child_recipe(const struct child_recipe *r)
{
    char magic[2];
    int is_script;

    refuse_root_ids(r->uid, r->gid);
    if (setsid() < 0)
        fail("setsid", errno);
    lower_limits(&r->limits);

    /* Read the magic as root: the fd was opened by the executor. */
    is_script = pread(r->exec_fd, magic, 2, 0) == 2 && magic[0] == '#' && magic[1] == '!';

    drop_privileges(r->uid, r->gid);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("no_new_privs", errno);
    if (chdir(r->home) != 0 && chdir("/tmp") != 0)
        fail("chdir", errno);

    close_other_fds(r->exec_fd, status_fd, r->keep_fd);
    set_cloexec(r->exec_fd, !is_script, "exec-fd");
    if (r->keep_fd >= 0)
        set_cloexec(r->keep_fd, 0, "keep-fd");

    fexecve(r->exec_fd, r->argv, r->envp);
    fail("exec", errno);
}

#endif
