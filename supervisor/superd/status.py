"""The rows of `status`: what each instance is doing, with its CPU, memory
and dropped log bytes.  The wire result and `superctl --json status` are the
same list of these rows.

A status of every instance builds one row per instance on every call, so
the per-row work is kept to reads of attributes: no /proc (resources.py
keeps its readings FRESH_FOR seconds), no enum descriptors, one clock read.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from .exits import describe_exit
from .logs import Logs
from .registry import Registry
from .resources import NO_FIGURES, Figures, ResourceSampler
from .states import State
from .worker import Instance

Row = dict[str, Any]

# State.value goes through a Python-level descriptor; a dict of str keys does not.
STATE_NAMES = {state: state.value for state in State}
# A few hundred exit statuses at most; a signal's name costs an enum lookup.
exit_words = functools.lru_cache(maxsize=1024)(describe_exit)


def status_row(instance: Instance, now: float | None = None, figures: Figures = NO_FIGURES,
               dropped: int = 0) -> Row:
    """`now` is time.monotonic(), read once for all the rows of one reply."""
    pid, started_at = instance.pid, instance.started_at
    if now is None:
        now = time.monotonic()
    return {
        "name": instance.name,
        "worker": instance.config.name,
        "state": STATE_NAMES[instance.state],
        "pid": pid,
        # round(x * 1000) / 1000, not round(x, 3): a third of the cost, and
        # the two differ by 1 ms at most, on exact ties.
        "uptime": None if pid is None or started_at is None
        else round((now - started_at) * 1000) / 1000,
        "restarts": instance.restarts,
        "exit_status": instance.exit_status,
        "cpu_percent": figures[0],
        "rss_bytes": figures[1],
        "description": description(instance),
        "status_text": instance.status_text,
        "log_dropped_bytes": dropped,
    }


def description(instance: Instance) -> str:
    """Why superd cannot start it, while that holds; else how it last ended."""
    if instance.shortage is not None:
        return instance.shortage
    return exit_words(instance.exit_status) if instance.pid is None else ""


class StatusReport:
    def __init__(self, registry: Registry, logs: Logs) -> None:
        self.registry = registry
        self.logs = logs
        self.resources = ResourceSampler(is_leader=lambda pid: registry.by_pid(pid) is not None)

    def rows(self, instances: list[Instance]) -> list[Row]:
        """One row per instance, with figures at most FRESH_FOR seconds old."""
        figures = self.resources.measure({i.name: i.pid for i in instances if i.pid is not None})
        self.resources.prune({i.name for i in self.registry.instances() if i.pid is not None})
        now, dropped = time.monotonic(), self.logs.dropped
        return [status_row(i, now, figures.get(i.name, NO_FIGURES), dropped(i.name))
                for i in instances]
