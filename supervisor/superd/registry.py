"""The instances superd runs: by name and by pid, name resolution, and reaping.

Reaping happens here and only here: `waitpid(-1, WNOHANG)` until nothing is
left, each pid routed to the instance that owns it, or to whoever watches a
helper superd started for itself (the check before a re-exec); other pids
(orphans of workers, re-parented to superd as a subreaper) are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from .exits import describe_wait_status
from .worker import Instance

log = logging.getLogger("superd")

# (instance, raw wait status): its main process was reaped.
Death = Callable[[Instance, int], None]
# (raw wait status): a helper process was reaped.
HelperExit = Callable[[int], None]


class UnknownName(Exception):
    pass


class Registry:
    def __init__(self, groups: Callable[[], dict[str, tuple[str, ...]]] = dict) -> None:
        self._groups = groups  # the running config's groups, asked when a name is resolved
        self._by_name: dict[str, Instance] = {}
        self._by_pid: dict[int, Instance] = {}
        self._retiring: set[Instance] = set()  # removed by a reload, still stopping
        self._helpers: dict[int, HelperExit] = {}

    # -- membership --------------------------------------------------------
    def instances(self) -> list[Instance]:
        """The configured instances, in config order."""
        return list(self._by_name.values())

    def everything(self) -> list[Instance]:
        """The configured instances and those a reload removed that still run."""
        return [*self._by_name.values(), *self._retiring]

    def get(self, name: str) -> Instance | None:
        return self._by_name.get(name)

    def replace(self, instances: Iterable[Instance]) -> None:
        """A reload: these are the configured instances from now on."""
        self._by_name = {instance.name: instance for instance in instances}

    def retire(self, instance: Instance) -> None:
        """Removed from the config; its pid is still reaped until it is gone."""
        if instance.pid is not None:
            self._retiring.add(instance)

    def group_names(self) -> list[str]:
        return list(self._groups())

    # -- pids --------------------------------------------------------------
    def track(self, pid: int, instance: Instance) -> None:
        self._by_pid[pid] = instance

    def watch(self, pid: int, on_exit: HelperExit) -> None:
        """A child of superd's own, not a worker: tell on_exit when it is reaped."""
        self._helpers[pid] = on_exit

    def by_pid(self, pid: int) -> Instance | None:
        return self._by_pid.get(pid)

    def find_notifier(self, pid: int) -> Instance | None:
        """The instance whose main process is `pid` or leads `pid`'s group."""
        instance = self._by_pid.get(pid)
        if instance is None:
            try:
                instance = self._by_pid.get(os.getpgid(pid))
            except OSError:
                return None
        if instance is None or instance.pid is None:
            return None
        return instance

    def reap(self, died: Death) -> None:
        """Collect every child that has exited; hand each worker's to `died`."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            instance = self._by_pid.pop(pid, None)
            if instance is None and pid in self._helpers:
                self._helpers.pop(pid)(status)
                continue
            if instance is None or instance.pid != pid:
                log.info("reaped pid %d (%s), not a worker", pid, describe_wait_status(status))
                continue
            died(instance, status)  # its transition's log line says how it ended
            self._retiring.discard(instance)

    # -- names -------------------------------------------------------------
    def resolve(self, names: list[str]) -> list[Instance]:
        """Expand `all`, group, worker and instance names; keep order, no repeats."""
        if not names or names == ["all"]:
            return self.instances()  # what status asks, over and over
        found: dict[str, Instance] = {}
        for name in names:
            matches = self.match(name)
            if not matches and name != "all":  # `all` of no workers is no error
                raise UnknownName(f"no such worker: {name}")
            found.update((instance.name, instance) for instance in matches)
        return list(found.values())

    def match(self, name: str) -> list[Instance]:
        """`all`, one instance by name, every instance of a worker, or of a group's workers."""
        if name == "all":
            return self.instances()
        if name in self._by_name:
            return [self._by_name[name]]
        workers = self._groups().get(name, (name,))
        return [i for i in self._by_name.values() if i.config.name in workers]
