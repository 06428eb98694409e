"""Rolling restarts: instances restarted one at a time, each serving again
before the next is stopped.

A Roll takes its instances in turn: it stops the instance if a process is
alive, gives it the settings the running config has for its worker, starts
it through the orchestrator (so its dependencies still hold), and waits
until it serves (RUNNING, and healthy if it has a healthcheck) or has
failed; then it goes on to the next.  A failure ends the roll there and
leaves the rest as they are.  Rolls keeps the rolls under way, one per
instance at most: another restart of an instance a roll holds is refused,
and a stop, a reload that changes or removes one of its instances, or a
shutdown ends the roll.  Everything waits on the waiters; nothing blocks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from .exits import describe_exit
from .orchestrator import Orchestrator
from .running import RunningConfig
from .states import PROCESS_ALIVE, Event, State
from .worker import Instance

log = logging.getLogger("superd")

# Per instance, in the roll's order: None once restarted and serving, else
# why not (its failure, or why the roll never got to it).
Outcome = list[tuple[Instance, str | None]]
Done = Callable[[Outcome], None]


class RollBusy(Exception):
    """A rolling restart already holds one of the instances; nothing changed."""


class Roll:
    def __init__(self, instances: list[Instance], orchestrator: Orchestrator,
                 running: RunningConfig, on_done: Done) -> None:
        self.instances = instances
        self._orchestrator = orchestrator
        self._running = running
        self._on_done = on_done
        self._queue = deque(instances)
        self._outcome: dict[Instance, str | None] = {}
        self._current: Instance | None = None
        self._reached_running = False  # the current instance has been RUNNING this turn
        self._turn_over = True  # no turn is waiting: the next may begin
        self._advancing = False
        self.finished = False

    def go_on(self) -> None:
        """Begin the next turns, as long as each one is over at once."""
        # Turns that end at once (startsecs: 0) are taken by this loop, not
        # from the waiter's callback, so a roll of many never recurses.
        self._advancing = True
        while self._turn_over and self._queue and not self.finished:
            self._restart(self._queue.popleft())
        self._advancing = False
        if self._turn_over and not self._queue and not self.finished:
            log.info("rolling restart done: %s", ", ".join(i.name for i in self.instances))
            self._finish("")

    def end(self, reason: str) -> None:
        """Go no further (a stop, a reload, a shutdown); the instance being
        restarted finishes its own restart."""
        if self.finished:
            return
        current = self._current
        if current is not None and current not in self._outcome:
            self._outcome[current] = f"rolling restart ended: {reason}"
        log.warning("rolling restart ended: %s%s", reason, self._untouched())
        self._finish(f"not restarted: rolling restart ended ({reason})")

    # -- one turn -------------------------------------------------------------
    def _restart(self, instance: Instance) -> None:
        self._current, self._reached_running, self._turn_over = instance, False, False
        if instance.state in PROCESS_ALIVE:
            instance.handle(Event.STOP)  # with the settings it was started with
        self._take_running_settings(instance)
        self._orchestrator.start(instance)
        self._orchestrator.when([instance], self._serving_or_failed, self._turn_ended)

    def _serving_or_failed(self, instance: Instance) -> bool:
        if instance.serving:
            return True
        if instance.state is State.RUNNING:
            self._reached_running = True  # and waiting for its healthcheck
            return instance.health == "unhealthy"
        # Out of RUNNING before it served (it exited, or its healthcheck
        # restarted it): failed, as much as a start that never got there.
        return self._reached_running or self._orchestrator.start_settled(instance)

    def _turn_ended(self) -> None:
        instance = self._current
        if self.finished or instance is None:
            return  # ended meanwhile: this turn's waiter outlived the roll
        if not instance.serving:
            self._fail(instance)
            return
        self._outcome[instance] = None
        self._turn_over = True
        if not self._advancing:
            self.go_on()

    def _fail(self, instance: Instance) -> None:
        why = "unhealthy" if instance.health == "unhealthy" else (
            describe_exit(instance.exit_status) or f"ended {instance.state.value}")
        self._outcome[instance] = why
        log.error("rolling restart stopped at %s (%s)%s", instance.name, why, self._untouched())
        self._finish(f"not restarted: {instance.name} failed")

    # -- the end --------------------------------------------------------------
    def _finish(self, rest: str) -> None:
        self.finished = True
        for instance in self._queue:
            self._outcome[instance] = rest
            # Not restarted, but a reload's settings are theirs from their next start.
            self._take_running_settings(instance)
        self._queue.clear()
        self._on_done([(instance, self._outcome[instance]) for instance in self.instances])

    def _untouched(self) -> str:
        if not self._queue:
            return ""
        return "; not restarted: " + ", ".join(instance.name for instance in self._queue)

    def _take_running_settings(self, instance: Instance) -> None:
        worker = self._running.workers.get(instance.config.name)
        if worker is not None and worker is not instance.config:
            instance.reconfigure(worker)


class Rolls:
    """The rolling restarts under way, by the instances they hold."""

    def __init__(self, running: RunningConfig, orchestrator: Orchestrator) -> None:
        self._running = running
        self._orchestrator = orchestrator
        self._by_instance: dict[Instance, Roll] = {}

    def check_free(self, instances: list[Instance]) -> None:
        """RollBusy if a roll holds one of these instances."""
        held = next((i for i in instances if i in self._by_instance), None)
        if held is not None:
            raise RollBusy(f"a rolling restart of {held.name} is under way")

    def begin(self, instances: list[Instance], on_done: Done) -> None:
        """Restart instances one at a time, in this order; on_done with the
        outcome once the last serves, or once the roll ends early.

        RollBusy, with nothing changed, when a roll already holds one of them.
        """
        self.check_free(instances)

        def finished(outcome: Outcome) -> None:
            for instance in instances:
                if self._by_instance.get(instance) is roll:
                    del self._by_instance[instance]
            on_done(outcome)

        roll = Roll(instances, self._orchestrator, self._running, finished)
        self._by_instance.update((instance, roll) for instance in instances)
        roll.go_on()

    def end_rolls_of(self, instances: list[Instance], what: str) -> None:
        """End every roll that holds one of these instances: `NAME what`
        (e.g. `was stopped`) says why."""
        ending: dict[Roll, Instance] = {}
        for instance in instances:
            roll = self._by_instance.get(instance)
            if roll is not None:
                ending.setdefault(roll, instance)
        for roll, instance in ending.items():
            roll.end(f"{instance.name} {what}")

    def end_all(self, reason: str) -> None:
        for roll in dict.fromkeys(self._by_instance.values()):
            roll.end(reason)
