/*
 * NAME
 *      child_recipe.h - the steps of one run: its private mounts, and the
 *      program's process from its creation to fexecve
 *
 * TRUSTS
 *      The run slot (slot.h) that calls it: pid 1 of a PID namespace of its own,
 *      in a copy of the spawner's mount namespace, root, acting on a request the
 *      spawner (spawner.c) has checked (uid/gid allowed, network index known,
 *      strings NUL-terminated). The exec fd (opened by the executor: a sealed
 *      memfd of registered bytes, or an insecure-mode file opened with the
 *      account's rights). Nothing the program does can reach back here: every
 *      privileged step happens before its first instruction, and the slot's
 *      pid 1 left behind is root's and only waits.
 *
 * DEFENDS AGAINST                                  (test that shows it)
 *      running as root or with a way back to it        test_sandbox: test_uid_zero_is_refused,
 *                                                       test_runs_as_the_user_with_nothing_else
 *      reaching a host Unix socket (PostgreSQL's        test_containment: test_host_unix_sockets_
 *        /var/run/postgresql, RabbitMQ's, /tmp ones)     tcp_and_proc_are_unreachable
 *      seeing or signalling the executor, other runs    test_containment: test_proc_shows_only_
 *        or host processes through /proc                 the_run_and_umask_is_077
 *      files readable by others (umask 077)             test_containment: test_proc_shows_only_
 *                                                        the_run_and_umask_is_077
 *      inheriting fds, environment, signal dispositions test_sandbox: test_runs_as_the_user_...
 *      gaining privileges through exec (set-uid,        tests/security/test_hostile.py:
 *        file capabilities)                               test_setuid_setgid_root_refused
 *      a later run finding this run's files or home     test_sandbox: test_a_reused_slot_
 *        mount (undo_run_mounts)                          shows_nothing_of_the_previous_run
 *
 * STEPS (in this order; any failure writes "<step> <errno>\n" to the status
 * fd and exits 127: it never shows up as program output)
 *      In the slot's pid 1, per run (run_mounts()):
 *      1. an empty tmpfs on /tmp and /dev/shm (1777, size-limited): the one the
 *         slot's previous run left empty, else a fresh one; a home under /tmp or
 *         /dev/shm that the account can reach on the host is bound back at its
 *         path, nothing else of the host's (a kept tmpfs is replaced first
 *         unless the home plainly lies elsewhere: home_outside_covered()). The
 *         namespace copied from the spawner's has "/" private already (nothing
 *         propagates back to the host) and /run, /var/run (when a real
 *         directory) under an empty read-only tmpfs: the host's sockets under
 *         them vanish (spawner_mounts(), once at the spawner's start); /proc is
 *         the slot's own procfs (slot_mounts(), once per slot): it shows the
 *         slot's pid 1 and this run's processes, nothing else.
 *         undo_run_mounts(), once every process of the run is gone, unbinds the
 *         home and replaces /tmp and /dev/shm unless they are empty.
 *      In the program's process (slot.h dup2s the run's pipes onto fds 0-2 and
 *      enters the requested network namespace first), become_program():
 *      2. setsid(2): own session and process group;
 *      3. RLIMIT_CPU soft S hard S+1, AS, NPROC, FSIZE, NOFILE soft == hard,
 *         CORE 0 - before setuid, because the kernel checks NPROC there;
 *      4. reads the exec fd's first two bytes as root ("#!" script?);
 *      5. setgroups(0), setgid, setuid (real, effective, saved), verified, and
 *         setuid(0)/setgid(0) must fail;
 *      6. PR_SET_NO_NEW_PRIVS; umask 077;
 *      7. chdir(home) as the user, else chdir("/tmp") (the private one);
 *      8. closes every fd above 2 except the exec fd and the status fd (which
 *         is close-on-exec); the exec fd survives only for "#!" scripts;
 *      9. fexecve(exec fd, {argv0}, {"TZ=...", "AGENT=mailexec"}).
 *
 * WHY THE PROGRAM IS NOT PID 1
 *      A namespace's init ignores every signal it has no handler for when it
 *      comes from inside the namespace or from the kernel (SIGKILL and faults
 *      aside): a program running as pid 1 could not kill itself with SIGTERM
 *      or abort(), would get EPIPE instead of SIGPIPE and nothing at SIGXCPU.
 *      So the program is a child of the slot's pid 1 and keeps ordinary signal
 *      semantics; the pid 1 is slot.h's code, which the program can't signal
 *      (root, and init). Killing it (timeout, executor or spawner death) ends
 *      the whole run.
 *
 * DOES NOT
 *      Look up users (numeric ids only), build cgroups, or read the request.
 */
#ifndef MAILEXEC_CHILD_RECIPE_H
#define MAILEXEC_CHILD_RECIPE_H

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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

/* A fresh tmpfs on `dir`; `optional`: skip a directory that isn't there. Returns 1 when
 * mounted, 0 when skipped. */
static int mount_tmpfs(const char *dir, const char *mode, long long size, int optional)
{
    char opts[96];
    struct stat st;

    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        if (optional)
            return 0;   /* absent, or a symlink (/var/run -> /run: covered by /run) */
        fail("mount-tmpfs", ENOTDIR);
    }
    snprintf(opts, sizeof opts, "mode=%s,size=%lld,nr_inodes=%lld", mode, size,
             size / 4096 + 64);
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0)
        fail("mount-tmpfs", errno);
    return 1;
}

/* Whether uid/gid (no supplementary groups) may search every directory from / down to
 * and including `path` (an absolute, normalised path), by the mode bits. */
static int uid_can_reach(const char *path, uid_t uid, gid_t gid)
{
    char prefix[PATH_MAX];
    size_t len = strlen(path);
    struct stat st;

    if (len == 0 || len >= sizeof prefix || path[0] != '/')
        return 0;
    for (size_t end = 1; end <= len; end++) {
        if (end < len && path[end] != '/')
            continue;
        memcpy(prefix, path, end);
        prefix[end] = '\0';
        if (stat(prefix, &st) != 0 || !S_ISDIR(st.st_mode))
            return 0;
        if (!(st.st_mode & (st.st_uid == uid ? S_IXUSR : st.st_gid == gid ? S_IXGRP : S_IXOTH)))
            return 0;
    }
    return 1;
}

/* A home under a directory the run gets its own copy of (/tmp, /dev/shm) would
 * vanish with the host's copy: held open before the fresh tmpfs covers it, then bound
 * back at the same path, so the program still starts in its home (SPEC §3.6). Only when
 * the account could reach it on the host; nothing else of the host's /tmp comes back. */
static int hold_home(const char *home, uid_t uid, gid_t gid)
{
    static const char *const covered[] = {"/tmp/", "/dev/shm/"};
    char real[PATH_MAX];
    int covered_home = 0;

    if (realpath(home, real) == NULL)
        return -1;
    for (size_t i = 0; i < sizeof covered / sizeof covered[0]; i++)
        covered_home |= strncmp(real, covered[i], strlen(covered[i])) == 0;
    if (!covered_home || !uid_can_reach(real, uid, gid))
        return -1;
    return open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

/* What a slot has mounted for its runs. The private /tmp and /dev/shm are kept for the
 * next run while the last one left them empty (and the next run's home is not bound
 * under them); anything left in one, and it is replaced by a fresh tmpfs. */
struct run_mounts {
    long long tmp_bytes;        /* the size the kept tmpfs were made with */
    int tmp, shm;               /* /tmp, /dev/shm carry a tmpfs of this slot's */
    char home[PATH_MAX];        /* where this run's home is bound back, "" when it isn't */
};

/* Bind the held home back at its path inside the run's fresh tmpfs (mkdir -p as root);
 * the path goes to `bound` ("" when there is none). */
static void bind_home(int held, char *bound)
{
    char real[PATH_MAX], from[64];
    ssize_t n;

    bound[0] = '\0';
    if (held < 0)
        return;
    snprintf(from, sizeof from, "/proc/self/fd/%d", held);
    n = readlink(from, real, sizeof real - 1);
    if (n <= 0)
        fail("home", n < 0 ? errno : ENOENT);
    real[n] = '\0';
    for (char *slash = strchr(real + 1, '/'); ; slash = strchr(slash + 1, '/')) {
        if (slash)
            *slash = '\0';
        if (mkdir(real, 0755) != 0 && errno != EEXIST)
            fail("home-mkdir", errno);
        if (!slash)
            break;
        *slash = '/';
    }
    if (mount(from, real, NULL, MS_BIND, NULL) != 0)
        fail("home-bind", errno);
    close(held);
    memcpy(bound, real, (size_t) n + 1);
}

/* Whether `home` resolves the same with the host's /tmp and /dev/shm as with the slot's
 * kept ones, to a place outside both (so it needs no bind): an absolute path of plain
 * components ("", "." and ".." refused), not under /tmp/ or /dev/shm/, none of whose
 * existing prefixes is a symlink (one could lead under them). */
static int home_outside_covered(const char *home)
{
    char prefix[PATH_MAX];
    size_t len = strlen(home);
    struct stat st;

    if (len == 0 || len >= sizeof prefix || home[0] != '/'
        || !strncmp(home, "/tmp/", 5) || !strncmp(home, "/dev/shm/", 9))
        return 0;
    if (len == 1)
        return 1;
    for (size_t start = 1; start <= len; ) {
        const char *slash = strchr(home + start, '/');
        size_t end = slash ? (size_t) (slash - home) : len, n = end - start;

        if (n == 0 || (n == 1 && home[start] == '.')
            || (n == 2 && home[start] == '.' && home[start + 1] == '.'))
            return 0;
        memcpy(prefix, home, end);
        prefix[end] = '\0';
        if (lstat(prefix, &st) != 0)
            return errno == ENOENT;     /* the rest is absent in both views */
        if (S_ISLNK(st.st_mode))
            return 0;
        start = end + 1;
    }
    return 1;
}

/* Whether the directory holds nothing but "." and ".."; 0 when it can't be read. */
static int dir_is_empty(const char *dir)
{
    char buf[256];
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), empty = 1;
    long n;

    if (fd < 0)
        return 0;
    while (empty && (n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
        for (long off = 0; off < n; ) {
            const char *name = buf + off + 19;  /* struct linux_dirent64: d_name at 19 */
            unsigned short reclen;

            memcpy(&reclen, buf + off + 16, sizeof reclen);
            if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0)
                empty = 0;
            off += reclen;
        }
    close(fd);
    return empty && n == 0;
}

static void unmount_or_fail(const char *dir, int *mounted)
{
    if (*mounted && umount2(dir, MNT_DETACH) != 0)
        fail("umount", errno);
    *mounted = 0;
}

/* One run's private view: an empty private /tmp and /dev/shm (kept from the slot's last
 * run when it left them empty, else fresh), nothing of the host's but the run's home.
 * (/ is private and /run, /var/run an empty read-only tmpfs already: the spawner's own
 * mount namespace, copied into the slot's, see spawner_mounts(); /proc is the slot's,
 * see slot_mounts().) */
static void run_mounts(struct run_mounts *m, long long tmp_bytes, const char *home,
                       uid_t uid, gid_t gid)
{
    int held;

    if ((m->tmp || m->shm) && (m->tmp_bytes != tmp_bytes || !home_outside_covered(home))) {
        unmount_or_fail("/tmp", &m->tmp);       /* the home must be found on the host's */
        unmount_or_fail("/dev/shm", &m->shm);
    }
    held = m->tmp ? -1 : hold_home(home, uid, gid);
    if (!m->tmp)
        m->tmp = mount_tmpfs("/tmp", "1777", tmp_bytes, 0);
    if (!m->shm)
        m->shm = mount_tmpfs("/dev/shm", "1777", tmp_bytes, 1);
    m->tmp_bytes = tmp_bytes;
    bind_home(held, m->home);
}

/* After a run, once every process of it is gone: its home unbound, and /tmp and /dev/shm
 * replaced unless they are empty (their times reset then). Returns 0, or -1 when the
 * slot can't be made clean again and must not serve another run. */
static int undo_run_mounts(struct run_mounts *m)
{
    static const struct timespec now[2] = {{.tv_nsec = UTIME_NOW}, {.tv_nsec = UTIME_NOW}};

    if (m->home[0]) {
        if (umount2(m->home, MNT_DETACH) != 0
            || (m->tmp && umount2("/tmp", MNT_DETACH) != 0))   /* mkdir'ed: never empty */
            return -1;
        m->home[0] = '\0';
        m->tmp = 0;
    }
    if (m->tmp && (!dir_is_empty("/tmp") || utimensat(AT_FDCWD, "/tmp", now, 0) != 0)) {
        if (umount2("/tmp", MNT_DETACH) != 0)
            return -1;
        m->tmp = 0;
    }
    if (m->shm && (!dir_is_empty("/dev/shm") || utimensat(AT_FDCWD, "/dev/shm", now, 0) != 0)) {
        if (umount2("/dev/shm", MNT_DETACH) != 0)
            return -1;
        m->shm = 0;
    }
    return 0;
}

/* Once per slot, in its new PID namespace: a procfs that shows only this namespace. */
static int slot_mounts(void)
{
    return mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* An empty, read-only tmpfs over `dir` when it is a real directory (not a symlink). */
static int mount_empty_ro(const char *dir)
{
    struct stat st;

    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    return mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
                 "mode=0755,size=4096,nr_inodes=16");
}

/* Once, in the spawner at start: its own mount namespace, "/" private recursively (so
 * the runs' copies are private without a per-run propagation change and nothing of
 * theirs propagates back to the host), /run and /var/run hidden under one empty
 * read-only tmpfs (the host's sockets under them - PostgreSQL's, an MTA's - vanish for
 * every run). Returns 0, or -1 with errno set. */
static int spawner_mounts(void)
{
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return -1;
    if (mount_empty_ro("/run") != 0 || mount_empty_ro("/var/run") != 0)
        return -1;
    return 0;
}

#define MAX_KEEP_FDS 8

static int cmp_int(const void *a, const void *b)
{
    return (*(const int *) a > *(const int *) b) - (*(const int *) a < *(const int *) b);
}

/* Close every fd >= 3 except the `n` listed ones (entries below 3 are ignored). */
static void close_fds_except(const int *fds, int n)
{
    int keep[MAX_KEEP_FDS];
    unsigned int low = 3;

    if (n > MAX_KEEP_FDS)
        fail("close_range", EINVAL);
    memcpy(keep, fds, (size_t) n * sizeof *keep);
    qsort(keep, (size_t) n, sizeof *keep, cmp_int);
    for (int i = 0; i < n; i++) {
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
    char *const *argv;
    char *const *envp;
};

/* The program's own steps, in a process the slot made: from setsid to fexecve. */
__attribute__((noreturn))
static void become_program(const struct child_recipe *r)
{
    char magic[2];
    int is_script;

    if (setsid() < 0)
        fail("setsid", errno);
    lower_limits(&r->limits);

    /* Read the magic as root: the fd was opened by the executor (or for the account). */
    is_script = pread(r->exec_fd, magic, 2, 0) == 2 && magic[0] == '#' && magic[1] == '!';

    drop_privileges(r->uid, r->gid);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("no_new_privs", errno);
    umask(077);
    if (chdir(r->home) != 0 && chdir("/tmp") != 0)
        fail("chdir", errno);

    close_fds_except((int[]) {r->exec_fd, status_fd}, 2);
    set_cloexec(r->exec_fd, !is_script, "exec-fd");

    fexecve(r->exec_fd, r->argv, r->envp);
    fail("exec", errno);
}

#endif
