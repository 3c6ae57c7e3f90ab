/*
 * NAME
 *      mailexec-launch - run one delivery program as an unprivileged user
 *
 * SYNOPSIS
 *      mailexec-launch --status-fd N --exec-fd N --uid N --gid N --home DIR
 *              [--cgroup DIR] [--netns-fd N] [--keep-fd N]
 *              [--rlimit-cpu S] [--rlimit-as B] [--rlimit-nproc N]
 *              [--rlimit-fsize B] [--rlimit-nofile N]
 *              -- argv0 [arg ...]
 *
 * DESCRIPTION
 *      Started as root by the executor (services/executor/sandbox.py) with
 *      stdin, stdout and stderr already connected to the delivery's pipes and
 *      the environment already reduced to exactly what the program gets.
 *      It exists so that Python can spawn without a preexec_fn (CPython's fast
 *      vfork path) while the privileged set-up still happens in the child.
 *      In this order it:
 *
 *      1. marks the status fd close-on-exec;
 *      2. refuses uid 0 and gid 0;
 *      3. joins the cgroup v2 directory DIR (writes its pid to
 *         DIR/cgroup.procs), so the executor can kill the whole tree later;
 *      4. setns(2) into the network namespace of the inherited --netns-fd,
 *         then closes that fd (optional: sandbox.py instead spawns the
 *         launcher already inside the namespace, which is cheaper when many
 *         runs are in flight; the option serves callers that can't);
 *      5. setsid(2): own session and process group (pgid == pid);
 *      6. lowers the resource limits given (RLIMIT_CPU soft S, hard S+1 so
 *         the program sees SIGXCPU before SIGKILL; AS, NPROC, FSIZE, NOFILE
 *         soft == hard) and RLIMIT_CORE to 0 (no core files of mail);
 *      7. setgroups(0, NULL), setgid(gid), setuid(uid) - all of real,
 *         effective and saved ids - then checks the ids and that setuid(0)
 *         and setgid(0) now fail;
 *      8. prctl(PR_SET_NO_NEW_PRIVS): no set-uid/set-gid/file-capability gain
 *         through exec;
 *      9. chdir(DIR of --home) as the user, else chdir("/tmp");
 *     10. closes every fd above 2 except the exec fd, the --keep-fd and the
 *         status fd (which is close-on-exec);
 *     11. fexecve(exec-fd, argv, environ).
 *
 *      Steps 5 to 11 are child_recipe.h (run_child_recipe), the one copy the
 *      persistent spawner (spawner.c) runs as well.
 *
 *      Errors before exec never appear as program output: the launcher writes
 *      "<step> <errno>\n" to the status fd and exits 127. On a successful exec
 *      the status fd is closed by the kernel, so the executor reads EOF with
 *      no data (the same protocol as CPython's subprocess errpipe).
 *
 * SCRIPTS
 *      A file starting with "#!" is executed by the kernel handing
 *      "/dev/fd/N" to the interpreter, so the exec fd must survive the exec:
 *      only then is it left open (not close-on-exec); the interpreter, running
 *      as the user, reopens it through /dev/fd. For binaries the exec fd is
 *      close-on-exec and the program starts with only fds 0, 1 and 2.
 *      The --keep-fd (bubblewrap mode: the program's fd that bwrap execs via
 *      /proc/self/fd/N) is likewise left open.
 *
 * GUARANTEES
 *      The program never runs with uid 0 or gid 0, with supplementary groups,
 *      with a way back to root (checked), or able to gain privileges by exec.
 *      Its environment is exactly the launcher's own (the caller passes only
 *      TZ and AGENT). It is the leader of a new session and process group.
 *
 * DOES NOT
 *      Create namespaces, mount anything, filter system calls, enforce the
 *      wall-clock timeout, or read/write the program's stdin/stdout: the
 *      executor does those. It does not look up users (numeric ids only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "child_recipe.h"

extern char **environ;

static unsigned long long parse_num(const char *text, const char *what)
{
    char *end;
    unsigned long long value;

    errno = 0;
    if (text[0] < '0' || text[0] > '9')
        fail(what, EINVAL);
    value = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        fail(what, errno ? errno : EINVAL);
    return value;
}

static int parse_fd(const char *text, const char *what)
{
    unsigned long long value = parse_num(text, what);

    if (value > INT_MAX)
        fail(what, EBADF);
    return (int) value;
}

static void join_cgroup(const char *dir)
{
    char path[PATH_MAX], pid[32];
    int fd, len;

    if (snprintf(path, sizeof path, "%s/cgroup.procs", dir) >= (int) sizeof path)
        fail("cgroup", ENAMETOOLONG);
    if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
        fail("cgroup", errno);
    len = snprintf(pid, sizeof pid, "%d", (int) getpid());
    if (write(fd, pid, (size_t) len) != len)
        fail("cgroup", errno);
    close(fd);
}

enum { OPT_STATUS = 1, OPT_EXEC, OPT_UID, OPT_GID, OPT_HOME, OPT_CGROUP,
       OPT_NETNS, OPT_KEEP, OPT_CPU, OPT_AS, OPT_NPROC, OPT_FSIZE, OPT_NOFILE };

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"status-fd", required_argument, NULL, OPT_STATUS},
        {"exec-fd", required_argument, NULL, OPT_EXEC},
        {"uid", required_argument, NULL, OPT_UID},
        {"gid", required_argument, NULL, OPT_GID},
        {"home", required_argument, NULL, OPT_HOME},
        {"cgroup", required_argument, NULL, OPT_CGROUP},
        {"netns-fd", required_argument, NULL, OPT_NETNS},
        {"keep-fd", required_argument, NULL, OPT_KEEP},
        {"rlimit-cpu", required_argument, NULL, OPT_CPU},
        {"rlimit-as", required_argument, NULL, OPT_AS},
        {"rlimit-nproc", required_argument, NULL, OPT_NPROC},
        {"rlimit-fsize", required_argument, NULL, OPT_FSIZE},
        {"rlimit-nofile", required_argument, NULL, OPT_NOFILE},
        {NULL, 0, NULL, 0},
    };
    int exec_fd = -1, netns_fd = -1, keep_fd = -1, have_uid = 0, have_gid = 0;
    unsigned long long uid = 0, gid = 0;
    const char *home = NULL, *cgroup = NULL;
    struct child_limits limits = {.cpu = -1, .as = -1, .nproc = -1, .fsize = -1, .nofile = -1};
    int opt;

    /* The status fd comes first so that every later error can be reported. */
    for (int i = 1; i + 1 < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--status-fd") == 0) {
            char *end;
            long fd = strtol(argv[i + 1], &end, 10);

            if (*end != '\0' || fd < 3 || fd > INT_MAX)
                _exit(127);
            status_fd = (int) fd;
            set_cloexec(status_fd, 1, "status-fd");
        }
    if (status_fd < 0)
        _exit(127);

    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+", options, NULL)) != -1) {
        switch (opt) {
        case OPT_STATUS: break;
        case OPT_EXEC: exec_fd = parse_fd(optarg, "exec-fd"); break;
        case OPT_UID: uid = parse_num(optarg, "uid"); have_uid = 1; break;
        case OPT_GID: gid = parse_num(optarg, "gid"); have_gid = 1; break;
        case OPT_HOME: home = optarg; break;
        case OPT_CGROUP: cgroup = optarg; break;
        case OPT_NETNS: netns_fd = parse_fd(optarg, "netns-fd"); break;
        case OPT_KEEP: keep_fd = parse_fd(optarg, "keep-fd"); break;
        case OPT_CPU: limits.cpu = (int64_t) parse_num(optarg, "rlimit-cpu"); break;
        case OPT_AS: limits.as = (int64_t) parse_num(optarg, "rlimit-as"); break;
        case OPT_NPROC: limits.nproc = (int64_t) parse_num(optarg, "rlimit-nproc"); break;
        case OPT_FSIZE: limits.fsize = (int64_t) parse_num(optarg, "rlimit-fsize"); break;
        case OPT_NOFILE: limits.nofile = (int64_t) parse_num(optarg, "rlimit-nofile"); break;
        default: fail("usage", EINVAL);
        }
    }
    if (exec_fd < 0 || !have_uid || !have_gid || home == NULL || optind >= argc)
        fail("usage", EINVAL);
    refuse_root_ids(uid, gid);

    if (cgroup != NULL)
        join_cgroup(cgroup);
    if (netns_fd >= 0) {
        if (setns(netns_fd, CLONE_NEWNET) != 0)
            fail("setns", errno);
        close(netns_fd);
    }
    /* setsid, rlimits, drop to uid/gid, no_new_privs, chdir, fds, fexecve */
    run_child_recipe(&(struct child_recipe) {
        .uid = (uid_t) uid, .gid = (gid_t) gid, .limits = limits, .home = home,
        .exec_fd = exec_fd, .keep_fd = keep_fd, .argv = &argv[optind], .envp = environ,
    });
}
