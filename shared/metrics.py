"""What every service's ``GET /metrics`` serves: its collectors, ``mailexec_build_info``,
and, for a service run as several worker processes, the sum over the workers.

One process (every service by default): the default registry (module-level collectors of
``services/<name>/metrics.py``, plus the process and platform collectors) followed by the
service's own scrape-time collectors.

Several processes (ingest with ``MAILEXEC_INGEST_WORKERS`` > 1): prometheus_client's
multiprocess mode. The supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a private directory
before forking (``services/ingest/main.py``); every worker's counters, histograms and gauges
live in mmap'd files there, and ``/metrics`` of whichever worker the scrape reaches reads them
all through ``MultiProcessCollector``, so a counter never appears to reset when the scrape
lands on another worker. Gauges declare how they combine (``multiprocess_mode``). The
scrape-time collectors (``extra``) are not per process: the worker answering computes them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import cache
from importlib import metadata

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ScrapeHook = Callable[[], Awaitable[None]]


@cache
def version() -> str:
    try:
        return metadata.version("mailexec")
    except metadata.PackageNotFoundError:
        return "unknown"


class BuildInfo(Collector):
    """``mailexec_build_info{version, python, service} 1``: which build answers."""

    def __init__(self, service: str) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mailexec_build_info", "The running mailexec build (always 1)",
            labels=["version", "python", "service"])
        family.add_metric([version(), platform.python_version(), self.service], 1)
        yield family


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Exposition:
    """The body of one service's ``/metrics``.

    ``extra``: collectors computed at scrape time, served by this exposition only (never
    registered on the default registry, so building several apps in one process is fine).
    ``before_scrape``: coroutines run first (e.g. refreshing a cached database number).
    ``multiprocess``: sum over the worker processes (module docstring); needs
    ``PROMETHEUS_MULTIPROC_DIR`` set before the first metric was created.
    """

    def __init__(self, service: str, *, extra: Iterable[Collector] = (),
                 before_scrape: Sequence[ScrapeHook] = (), multiprocess: bool = False) -> None:
        self.before_scrape = tuple(before_scrape)
        self.own = CollectorRegistry(auto_describe=True)
        self.own.register(BuildInfo(service))
        for collector in extra:
            self.own.register(collector)
        self.multiprocess = multiprocess
        if multiprocess:
            path = multiprocess_dir()
            if path is None:
                raise RuntimeError(f"multiprocess metrics need {MULTIPROC_ENV}")
            from prometheus_client import multiprocess as mp

            self.workers = CollectorRegistry()
            mp.MultiProcessCollector(self.workers, path=path)  # type: ignore[no-untyped-call]

    async def render(self) -> bytes:
        for hook in self.before_scrape:
            await hook()
        shared = generate_latest(self.workers if self.multiprocess else REGISTRY)
        return shared + generate_latest(self.own)
