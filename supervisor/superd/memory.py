"""The memory limit (`max_memory`): a RUNNING instance whose process group's
RSS is above its limit at IN_A_ROW checks in a row is restarted.

One timer serves every instance: a check every CHECK_EVERY seconds, armed
only while some RUNNING instance has a limit, so a daemon without one (or
with none running) never wakes up for this.  A check reads the groups of all
watched instances in one pass, found as resources.py finds them (down from
each leader through /proc/PID/task/TID/children, never a scan of /proc).
It does not use the readings `status` keeps: those may be half a second
old and are there to make status cheap, while a check is rare and wants now.

A reading that cannot be made (the process is gone, /proc cannot be opened)
is no evidence of being above the limit: like a reading below it, it ends
the run.  A run also starts over with each new process (a new pid).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .events import memory_event
from .resources import ProcessGroups, ProcFiles
from .states import Event, State
from .worker import Instance

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from .events import Event as Published
    from .worker import TimerHandle

    Schedule: TypeAlias = Callable[[float, Callable[[], None]], TimerHandle]
    # The RSS in bytes of each leader's process group; a leader left out has no reading.
    GroupRss: TypeAlias = Callable[[set[int]], dict[int, int]]

log = logging.getLogger("superd")

CHECK_EVERY = 10.0  # seconds between two checks
IN_A_ROW = 2  # checks in a row above the limit that restart an instance


@dataclass(frozen=True, slots=True)
class Run:
    """Where one process stands: its checks in a row above the limit."""

    pid: int
    above: int = 0


def next_run(run: Run, pid: int, rss: int | None, limit: int) -> Run:
    """The run after one more reading (rss None: none could be made)."""
    if rss is None or rss <= limit:
        return Run(pid)
    return Run(pid, run.above + 1 if run.pid == pid else 1)


class ProcGroupRss:
    """The RSS of whole process groups, read from /proc as status reads it."""

    def __init__(self, is_leader: Callable[[int], bool], files: ProcFiles | None = None) -> None:
        self.groups = ProcessGroups(files or ProcFiles(), is_leader)

    def __call__(self, leaders: set[int]) -> dict[int, int]:
        found = self.groups.find(leaders)
        return {pid: self.groups.rss(members) for pid, members in found.items()}


class MemoryGuard:
    """Watches the RUNNING instances that have a limit; restarts those that
    stay above it."""

    def __init__(self, schedule: Schedule, read: GroupRss,
                 publish: Callable[[Published], None], every: float = CHECK_EVERY) -> None:
        self.schedule = schedule
        self.read = read
        self.publish = publish
        self.every = every
        self._watched: dict[Instance, Run] = {}
        self._timer: TimerHandle | None = None

    # -- told by the supervisor --------------------------------------------
    def update(self, instance: Instance) -> None:
        """The instance may have changed state or settings: watch it while it
        is RUNNING with a limit, else forget it."""
        pid = instance.pid
        if instance.state is State.RUNNING and pid is not None \
                and instance.config.max_memory is not None:
            run = self._watched.get(instance)
            if run is None or run.pid != pid:
                self._watched[instance] = Run(pid)
            self._arm()
        elif self._watched.pop(instance, None) is not None and not self._watched:
            self._disarm()

    def review(self, instances: Iterable[Instance]) -> None:
        """Look at each again (after a take-over or a reload, which move no state)."""
        for instance in instances:
            self.update(instance)

    @property
    def armed(self) -> bool:
        return self._timer is not None

    # -- hand-over to a new image (a re-exec) --------------------------------
    def snapshot(self) -> dict[str, list[int]]:
        """Each watched instance's run, by name: [pid, checks above in a row]."""
        return {instance.name: [run.pid, run.above] for instance, run in self._watched.items()}

    def resume(self, runs: dict[str, Any]) -> None:
        """Go on with the runs of a snapshot, for the processes that still run."""
        for instance, run in self._watched.items():
            saved = runs.get(instance.name)
            if saved is not None and int(saved[0]) == run.pid:
                self._watched[instance] = Run(run.pid, int(saved[1]))

    # -- the check -------------------------------------------------------------
    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.schedule(self.every, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        self._arm()  # first: a fault in this check must not end the next ones
        readings = self.read({run.pid for run in self._watched.values()})
        over = []
        for instance, run in list(self._watched.items()):
            limit = instance.config.max_memory  # asked now: a reload applies at once
            if limit is None or instance.pid != run.pid or instance.state is not State.RUNNING:
                self.update(instance)  # what the transitions said, checked again
                continue
            rss = readings.get(run.pid)
            run = self._watched[instance] = next_run(run, run.pid, rss, limit)
            if rss is not None and run.above >= IN_A_ROW:
                over.append((instance, rss, limit))
        for instance, rss, limit in over:
            self._restart(instance, rss, limit)

    def _restart(self, instance: Instance, rss: int, limit: int) -> None:
        self.publish(memory_event(instance.name, instance.pid, rss, limit))
        log.warning("%s: memory (RSS of its process group) %d bytes, above max_memory %d "
                    "at %d checks in a row; restarting (pid %d)", instance.name, rss, limit,
                    IN_A_ROW, instance.pid or 0)
        instance.handle(Event.RESTART)
