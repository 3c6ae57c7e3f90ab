"""What the soaks sample while they run: a process's resident memory, RabbitMQ queue depths."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

WATCHED_QUEUES = ("deliveries", "notifier.events", "deliveries.dead")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def queue_depths(vhost: str) -> dict[str, int]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages",
                          "--formatter", "json"], capture_output=True, text=True, timeout=60)
    try:
        return {q["name"]: int(q["messages"]) for q in json.loads(out.stdout)
                if q["name"] in WATCHED_QUEUES}
    except (ValueError, KeyError):
        return {}
