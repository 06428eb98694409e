"""The rows of `status`: what each instance is doing, with its CPU, memory
and dropped log bytes.  The wire result and `superctl --json status` are the
same list of these rows.
"""

from __future__ import annotations

from typing import Any

from .exits import describe_exit
from .logs import Logs
from .registry import Registry
from .resources import ResourceSampler
from .worker import Instance

Row = dict[str, Any]


def status_row(instance: Instance) -> Row:
    uptime = instance.uptime()
    return {
        "name": instance.name,
        "worker": instance.config.name,
        "state": instance.state.value,
        "pid": instance.pid,
        "uptime": None if uptime is None else round(uptime, 3),
        "restarts": instance.restarts,
        "exit_status": instance.exit_status,
        "cpu_percent": None,
        "rss_bytes": None,
        "description": description(instance),
        "status_text": instance.status_text,
    }


def description(instance: Instance) -> str:
    """Why superd cannot start it, while that holds; else how it last ended."""
    if instance.shortage is not None:
        return instance.shortage
    return describe_exit(instance.exit_status) if instance.pid is None else ""


class StatusReport:
    def __init__(self, registry: Registry, logs: Logs) -> None:
        self.registry = registry
        self.logs = logs
        self.resources = ResourceSampler(is_leader=lambda pid: registry.by_pid(pid) is not None)

    def rows(self, instances: list[Instance]) -> list[Row]:
        """One row per instance, with figures at most FRESH_FOR seconds old."""
        rows = [status_row(instance) for instance in instances]
        running = {i.name: i.pid for i in instances if i.pid is not None}
        figures = self.resources.measure(running)
        self.resources.prune({i.name for i in self.registry.instances() if i.pid is not None})
        for row in rows:
            row["cpu_percent"], row["rss_bytes"] = figures.get(row["name"], (None, None))
            row["log_dropped_bytes"] = self.logs.dropped(row["name"])
        return rows
