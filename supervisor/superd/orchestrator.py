"""Starting and stopping instances in dependency order, and waiting for them.

A start is held until every dependency is RUNNING (starting the dependencies
first if they are not on their way); a stop of several instances stops
dependents before what they depend on.  Both run on waiters, so nothing here
ever blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .deps import dependents, start_order
from .exits import describe_exit
from .registry import Registry
from .running import RunningConfig
from .states import ACTIVE, PROCESS_ALIVE, Event, State
from .waiters import Settled, Waiters
from .worker import Instance

log = logging.getLogger("superd")


def stop_settled(instance: Instance) -> bool:
    return instance.state in (State.STOPPED, State.EXITED, State.FATAL)


def completed(instance: Instance) -> bool:
    """A one-shot that has exited with one of its exit codes."""
    return instance.state is State.EXITED and instance.exit_status in instance.config.exitcodes


class Orchestrator:
    def __init__(self, running: RunningConfig, registry: Registry, waiters: Waiters) -> None:
        self.running = running
        self.registry = registry
        self.waiters = waiters
        self._held: set[Instance] = set()  # starts waiting for their dependencies
        self._stops_held: set[Instance] = set()  # stops waiting for their dependents

    # -- what a start or stop has come to --------------------------------
    def start_settled(self, instance: Instance) -> bool:
        """RUNNING or FATAL, or stopped with no start still on its way."""
        if instance.state in (State.RUNNING, State.FATAL):
            return True
        pending = instance.start_pending or instance in self._held
        return instance.state in (State.STOPPED, State.EXITED) and not pending

    def when_started(self, instances: list[Instance], callback: Callable[[], None]) -> None:
        self.waiters.wait(instances, self.start_settled, callback)

    def when(self, instances: list[Instance], done: Settled,
             callback: Callable[[], None]) -> None:
        self.waiters.wait(instances, done, callback)

    # -- starting -----------------------------------------------------------
    def in_start_order(self, instances: list[Instance]) -> list[Instance]:
        rank = {name: index for index, name in enumerate(start_order(self.running.depends_on()))}
        return sorted(instances, key=lambda instance: rank[instance.config.name])

    def start_all(self, instances: list[Instance]) -> None:
        for instance in self.in_start_order(instances):
            self.start(instance)

    def autostart(self) -> None:
        self.start_all([i for i in self.registry.instances() if i.config.autostart])

    def start(self, instance: Instance) -> None:
        """START once every dependency is RUNNING (or, for {NAME: completed},
        has exited well), starting them first if needed."""
        needed = [dep for name in instance.config.depends_on for dep in self.registry.match(name)]
        one_shots = set(instance.config.completed_deps)
        for dependency in needed:
            if dependency.state not in ACTIVE and not self._ran(dependency, one_shots):
                self.start(dependency)
        if all(self._satisfies(dep, one_shots) for dep in needed):
            instance.handle(Event.START)
            return
        if instance in self._held:
            return
        self._held.add(instance)
        self.waiters.wake(instance)  # held: no longer settled for its own waiters
        self.waiters.wait(needed, lambda dep: self._dependency_settled(dep, one_shots),
                          lambda: self._dependencies_settled(instance, needed, one_shots))

    @staticmethod
    def _ran(dependency: Instance, one_shots: set[str]) -> bool:
        """A one-shot that has run (well or not) is not started again for a dependent."""
        return dependency.config.name in one_shots and dependency.state is not State.STOPPED

    @staticmethod
    def _satisfies(dependency: Instance, one_shots: set[str]) -> bool:
        if dependency.config.name in one_shots:
            return completed(dependency)
        return dependency.state is State.RUNNING

    def _dependency_settled(self, dependency: Instance, one_shots: set[str]) -> bool:
        if dependency.config.name not in one_shots:
            return self.start_settled(dependency)
        return stop_settled(dependency) and not (dependency.start_pending
                                                 or dependency in self._held)

    def _dependencies_settled(self, instance: Instance, needed: list[Instance],
                              one_shots: set[str]) -> None:
        if instance not in self._held:
            return  # stopped while it waited
        self._held.discard(instance)
        failed = [dep for dep in needed if not self._satisfies(dep, one_shots)]
        if failed:
            log.error("%s: not started: %s", instance.name,
                      "; ".join(_unmet(dep, one_shots) for dep in failed))
            self.waiters.wake(instance)
            return
        instance.handle(Event.START)

    def restart(self, instances: list[Instance]) -> None:
        """Stop (if a process is alive) then start each instance."""
        for instance in instances:
            if instance.state in PROCESS_ALIVE:
                instance.handle(Event.STOP)
            self.start(instance)

    # -- stopping -----------------------------------------------------------
    def stop_in_order(self, instances: list[Instance], callback: Callable[[], None]) -> None:
        """Stop dependents before what they depend on; call back when all stopped."""
        depends_on = self.running.depends_on()
        released = self._held.intersection(instances)
        self._held.difference_update(released)
        for instance in released:
            self.waiters.wake(instance)
        by_worker: dict[str, list[Instance]] = {}
        for instance in instances:
            by_worker.setdefault(instance.config.name, []).append(instance)
        # Per worker, not per instance: `stop all` of 10,000 instances must
        # not compare each with every other while the loop waits.
        for name, group in by_worker.items():
            blockers = [other for dependent in dependents(depends_on, name)
                        for other in by_worker.get(dependent, [])]
            for instance in group:
                self._stops_held.add(instance)
                self.waiters.wait(blockers, stop_settled, self._stopper(instance))
        self.waiters.wait(instances, stop_settled, callback)

    def _stopper(self, instance: Instance) -> Callable[[], None]:
        def stop() -> None:
            self._stops_held.discard(instance)
            instance.handle(Event.STOP)

        return stop

    # -- hand-over to a new image (a re-exec) -----------------------------------
    def pending(self) -> dict[str, list[str]]:
        """The starts and stops held for their turn, by instance name."""
        return {"starts": sorted(i.name for i in self._held),
                "stops": sorted(i.name for i in self._stops_held)}

    def resume(self, pending: dict[str, list[str]]) -> None:
        """Hold again what the image before held: the waits it had end with it."""
        stops = [i for name in pending["stops"] if (i := self.registry.get(name))]
        if stops:
            self.stop_in_order(stops, lambda: None)
        for name in pending["starts"]:
            instance = self.registry.get(name)
            if instance is not None and instance not in self._stops_held:
                self.start(instance)


def _unmet(dependency: Instance, one_shots: set[str]) -> str:
    if dependency.config.name not in one_shots:
        return f"dependency {dependency.name} is not running"
    how = describe_exit(dependency.exit_status) or dependency.state.value
    return f"dependency {dependency.name} did not complete ({how})"
