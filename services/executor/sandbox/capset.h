/*
 * NAME
 *      capset.h - a root helper keeps only the capabilities it uses
 *
 * SYNOPSIS
 *      #define _GNU_SOURCE
 *      #include "capset.h"                    (next to spawner.c: no -I needed)
 *
 *      if (narrow_capabilities(SPAWNER_CAPS) != 0)
 *          return 1;                           (errno says why; refuse to serve)
 *
 * DESCRIPTION
 *      The executor's Python process gives up every capability after start
 *      (services/executor/privdrop.py); the spawner is then the one process
 *      holding privilege, and it should hold only what it uses. Called in
 *      main() right after the spawner's own set-up (network and mount
 *      namespaces), before any request is read, while the process is still
 *      single-threaded (capabilities are per thread), narrow_capabilities(keep):
 *
 *      1. drops from the bounding set every capability not in keep, from 0 to
 *         /proc/sys/kernel/cap_last_cap (needs CAP_SETPCAP, which is dropped
 *         from the bounding set too but stays effective until step 3);
 *      2. clears the ambient set (PR_CAP_AMBIENT_CLEAR_ALL);
 *      3. capset(2): effective = permitted = keep (as far as they were
 *         permitted), inheritable = 0;
 *      4. reads the sets back (capget, PR_CAPBSET_READ) and fails with EPERM if
 *         anything outside keep is left.
 *      Returns 0, or -1 with errno set; the caller must then refuse to serve.
 *
 *      The children the spawner clones inherit the narrowed sets and lose the
 *      rest at their setuid to the account's uid (uid 0 -> non-zero clears the
 *      permitted and effective sets; the inheritable and ambient sets are empty
 *      already, and the bounding set holds only keep, so no exec can gain more).
 *
 *      SPAWNER_CAPS is what the spawner uses today, measured on this kernel
 *      (tests/executor/test_privsep.py, test_capset_*):
 *        CAP_SETUID, CAP_SETGID   setgroups/setgid/setuid to the account;
 *        CAP_KILL                 SIGKILL a run's process group (another uid);
 *        CAP_SYS_ADMIN            setns/unshare/clone into namespaces, mounts;
 *        CAP_DAC_OVERRIDE         clone3(CLONE_INTO_CGROUP) into a run cgroup the
 *                                 service user made: the kernel checks write
 *                                 access to its cgroup.procs, which is the
 *                                 service user's (drop it once the spawner makes
 *                                 the run cgroups itself, or lives in the
 *                                 delegated subtree);
 *      not CAP_NET_ADMIN: entering the egress namespace (setns) needs only
 *      CAP_SYS_ADMIN; the executor wires that namespace before it starts us.
 *
 * GUARANTEES
 *      On success the calling thread's effective, permitted and bounding sets
 *      are subsets of keep and its inheritable and ambient sets are empty.
 *
 * DOES NOT
 *      Change uids, set no_new_privs or dumpable (root helpers that exec
 *      programs leave that to the child recipe), or touch other threads.
 */
#ifndef MAILEXEC_CAPSET_H
#define MAILEXEC_CAPSET_H

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CAP_BIT(cap) (UINT64_C(1) << (cap))
#define SPAWNER_CAPS (CAP_BIT(CAP_SETUID) | CAP_BIT(CAP_SETGID) | CAP_BIT(CAP_KILL) \
                      | CAP_BIT(CAP_SYS_ADMIN) | CAP_BIT(CAP_DAC_OVERRIDE))

/* The kernel's last capability number (cap_last_cap), else the headers'. */
static int last_capability(void)
{
    char buf[16];
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    long last;

    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return CAP_LAST_CAP;
    buf[n] = '\0';
    last = strtol(buf, NULL, 10);
    return last > 0 && last < 64 ? (int) last : CAP_LAST_CAP;
}

/* Effective, permitted, inheritable of the calling thread as 64-bit masks. */
static int read_capabilities(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0}};

    if (syscall(SYS_capget, &header, data) != 0)
        return -1;
    *eff = data[0].effective | (uint64_t) data[1].effective << 32;
    *prm = data[0].permitted | (uint64_t) data[1].permitted << 32;
    *inh = data[0].inheritable | (uint64_t) data[1].inheritable << 32;
    return 0;
}

static int narrow_capabilities(uint64_t keep)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0}};
    uint64_t eff, prm, inh;
    int last = last_capability();

    for (int cap = 0; cap <= last; cap++)
        if (!(keep & CAP_BIT(cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            && errno != EINVAL)
            return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return -1;
    if (read_capabilities(&eff, &prm, &inh) != 0)
        return -1;
    prm &= keep;
    data[0].effective = data[0].permitted = (uint32_t) prm;
    data[1].effective = data[1].permitted = (uint32_t) (prm >> 32);
    if (syscall(SYS_capset, &header, data) != 0)
        return -1;
    if (read_capabilities(&eff, &prm, &inh) != 0)
        return -1;
    if ((eff | prm) & ~keep || inh) {
        errno = EPERM;
        return -1;
    }
    for (int cap = 0; cap <= last; cap++)
        if (!(keep & CAP_BIT(cap)) && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1) {
            errno = EPERM;
            return -1;
        }
    return 0;
}

#endif
