"""The shared empty network namespace is made in a throwaway thread; the privilege drop
right after refuses while a second thread is listed in /proc/self/task. ``join`` returns
a moment before the kernel reaps the thread, which once made a loaded CI machine's
executor refuse to start (exit 78, "2 threads at the privilege drop"): the maker now
waits until the thread is gone."""

from __future__ import annotations

import os

import pytest

from services.executor.sandbox.namespaces import create_empty_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unshare(CLONE_NEWNET) needs root")


def test_no_thread_is_left_listed_when_the_namespace_is_made() -> None:
    baseline = set(os.listdir("/proc/self/task"))
    for _ in range(200):
        fd = create_empty_netns()
        os.close(fd)
        assert set(os.listdir("/proc/self/task")) <= baseline
