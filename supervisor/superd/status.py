"""The rows of `status`: what each instance is doing, with its CPU, memory
and dropped log bytes.  The wire result and `superctl --json status` are the
same list of these rows.

A status of every instance writes one row per instance on every call, so a
row is JSON text put together from two parts: the fields that change only
when the instance does (its state, pid, restarts, exit, texts), encoded
once per change and kept (RowParts), and the four that change by themselves
(uptime, CPU, memory, dropped bytes; UPTIME and FIGURES).  No /proc either:
resources.py keeps its readings FRESH_FOR seconds.
"""

from __future__ import annotations

import functools
import time

from .exits import describe_exit
from .logs import Logs
from .protocol import to_json
from .registry import Registry
from .resources import NO_FIGURES, Figures, ResourceSampler
from .states import State
from .worker import Instance

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Row: TypeAlias = dict[str, Any]

# State.value goes through a Python-level descriptor; a dict of str keys does not.
STATE_NAMES = {state: state.value for state in State}
# A few hundred exit statuses at most; a signal's name costs an enum lookup.
exit_words = functools.lru_cache(maxsize=1024)(describe_exit)

# A row: its fixed fields' text, its uptime, then the fields that change by
# themselves (kept as text per instance while they are the same), and the
# "," before the next row.
UPTIME = ',"uptime":%.3f'
STOPPED = ',"uptime":null'
FIGURES = ',"cpu_percent":%s,"rss_bytes":%s,"log_dropped_bytes":%d},'


def fixed_fields(instance: Instance) -> Row:
    """The fields that change only when the instance itself does."""
    return {
        "name": instance.name,
        "worker": instance.config.name,
        "state": STATE_NAMES[instance.state],
        "pid": instance.pid,
        "restarts": instance.restarts,
        "exit_status": instance.exit_status,
        "description": description(instance),
        "status_text": instance.status_text,
        "health": instance.health,
    }


def description(instance: Instance) -> str:
    """Why superd cannot start it, while that holds; else how it last ended."""
    if instance.shortage is not None:
        return instance.shortage
    return exit_words(instance.exit_status) if instance.pid is None else ""


class RowParts:
    """One instance's row as kept text: its fixed fields (without the closing
    brace) while what they are made of is equal, and the changing fields
    while the figures and the dropped bytes are the same."""

    __slots__ = ("instance", "key", "fixed", "figures", "dropped", "tail")

    def __init__(self, instance: Instance, key: tuple[object, ...]) -> None:
        self.instance, self.key = instance, key
        self.fixed = to_json(fixed_fields(instance))[:-1]
        self.figures: Figures | None = None
        self.dropped = 0
        self.tail = ""

    def set_tail(self, figures: Figures, dropped: int) -> None:
        self.figures, self.dropped = figures, dropped
        self.tail = FIGURES % (*map(_json_number, figures), dropped)


class StatusReport:
    def __init__(self, registry: Registry, logs: Logs,
                 resources: ResourceSampler | None = None) -> None:
        self.registry = registry
        self.logs = logs
        self.resources = resources or worker_sampler(registry)
        self._parts: dict[str, RowParts] = {}

    def rows_json(self, instances: list[Instance]) -> str:
        """The rows as one JSON array, with figures at most FRESH_FOR seconds old."""
        figures = self.resources.measure({i.name: i.pid for i in instances if i.pid is not None})
        kept = len(self._parts)
        text = "".join(self._texts(instances, figures))
        if len(self._parts) > kept:  # a new name: a reload may have removed others
            self._forget_removed(self.registry.instances())
        return text

    def _texts(self, instances: list[Instance], figures: dict[str, Figures]) -> list[str]:
        """The pieces of the JSON array, to be joined (one copy, not one per row)."""
        # One loop, locals only: this runs once per instance per status call,
        # and touching each instance's objects is most of its cost.
        now, kept, texts = time.monotonic(), self._parts, ["["]
        dropped = self.logs.dropped_by_instance().get
        for instance in instances:
            name, pid = instance.name, instance.pid
            key = (instance.state, pid, instance.restarts, instance.exit_status,
                   instance.shortage, instance.status_text, instance.health, instance.config)
            parts = kept.get(name)
            if parts is None or parts.instance is not instance or parts.key != key:
                parts = kept[name] = RowParts(instance, key)
            started = None if pid is None else instance.started_at  # None: no process
            shown = NO_FIGURES if started is None else figures.get(name, NO_FIGURES)
            lost = dropped(name, 0)
            if parts.figures is not shown or parts.dropped != lost:
                parts.set_tail(shown, lost)
            texts += (parts.fixed, STOPPED if started is None else UPTIME % (now - started),
                      parts.tail)
        texts[-1] = texts[-1][:-1] + "]" if len(texts) > 1 else "[]"  # no "," after the last
        return texts

    def _forget_removed(self, configured: list[Instance]) -> None:
        names = {instance.name for instance in configured}
        for name in self._parts.keys() - names:
            del self._parts[name]


def worker_sampler(registry: Registry) -> ResourceSampler:
    """A sampler that knows the workers' main processes (never orphans)."""
    return ResourceSampler(is_leader=lambda pid: registry.by_pid(pid) is not None)


def _json_number(value: float | None) -> str:
    return "null" if value is None else str(value)
