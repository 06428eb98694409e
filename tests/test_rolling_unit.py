"""A roll without processes: real instances, orchestrator and waiters on a
fake runtime, so what "serving" means (healthy, with a healthcheck) and
where a roll ends can be driven step by step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from superd.config import load
from superd.orchestrator import Orchestrator
from superd.registry import Registry
from superd.rolling import Outcome, RollBusy, Rolls
from superd.running import RunningConfig
from superd.states import Event, State
from superd.waiters import Waiters
from superd.worker import Instance

EXIT_1 = 1 << 8


class Timer:
    def cancel(self) -> None:
        pass


class Runtime:
    """Spawns pids, keeps no timers, and wakes the waiters on every
    transition as the Supervisor does; with health, a process that becomes
    RUNNING is `starting` first, as health.py makes it."""

    def __init__(self, waiters: Waiters, health: bool) -> None:
        self.waiters = waiters
        self.health = health
        self.next_pid = 100

    def spawn(self, instance: Instance) -> int:
        self.next_pid += 1
        return self.next_pid

    def killpg(self, pgid: int, signum: int) -> None:
        pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return Timer()

    def transition(self, instance: Instance, old: State, new: State) -> None:
        if self.health and new is State.RUNNING:
            instance.set_health("starting")
        self.waiters.wake(instance)


class Harness:
    def __init__(self, tmp_path: Path, numprocs: int, startsecs: str = "1s",
                 health: bool = False) -> None:
        path = tmp_path / "superd.yaml"
        path.write_text(f"workers:\n  w: {{command: [run], numprocs: {numprocs}, "
                        f"startsecs: {startsecs}}}\n")
        running = RunningConfig(load(str(path)))
        self.waiters = Waiters()
        self.runtime = Runtime(self.waiters, health)
        registry = Registry()
        self.instances = [Instance(running.workers["w"], index, self.runtime)
                          for index in range(numprocs)]
        registry.replace(self.instances)
        self.rolls = Rolls(running, Orchestrator(running, registry, self.waiters))
        self.outcome: Outcome | None = None

    def run_all(self) -> None:
        for instance in self.instances:
            instance.handle(Event.START)
            instance.handle(Event.UP)
            self.judge(instance, "healthy")

    def roll(self) -> None:
        self.rolls.begin(self.instances, self.finished)

    def finished(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def judge(self, instance: Instance, health: str) -> None:
        if self.runtime.health:
            instance.set_health(health)
            self.waiters.wake(instance)

    def replace_process(self, instance: Instance) -> None:
        """The stopped process exits; the new one passes startsecs."""
        assert instance.state is State.STOPPING
        instance.died(0)
        assert instance.state is State.STARTING
        instance.handle(Event.UP)

    def states(self) -> list[str]:
        return [instance.state.value for instance in self.instances]

    def results(self) -> list[tuple[str, str | None]]:
        assert self.outcome is not None
        return [(instance.name, why) for instance, why in self.outcome]


def test_the_next_instance_is_stopped_only_once_the_last_is_healthy(tmp_path: Path) -> None:
    h = Harness(tmp_path, 3, health=True)
    h.run_all()
    first, second, third = h.instances
    pid = third.pid
    h.roll()
    assert h.states() == ["STOPPING", "RUNNING", "RUNNING"]
    h.replace_process(first)
    assert h.states() == ["RUNNING", "RUNNING", "RUNNING"]  # RUNNING, but not yet healthy
    h.judge(first, "healthy")
    assert h.states() == ["RUNNING", "STOPPING", "RUNNING"]
    h.replace_process(second)
    h.judge(second, "unhealthy")
    assert h.results() == [("w:0", None), ("w:1", "unhealthy"),
                           ("w:2", "not restarted: w:1 failed")]
    assert third.state is State.RUNNING and third.pid == pid
    h.rolls.check_free(h.instances)  # the roll let go of them


def test_an_instance_that_exits_before_it_is_healthy_ends_the_roll(tmp_path: Path) -> None:
    h = Harness(tmp_path, 2, health=True)
    h.run_all()
    h.roll()
    h.replace_process(h.instances[0])
    h.instances[0].died(EXIT_1)  # autorestart starts it again: still, it failed
    assert h.results() == [("w:0", "exit 1"), ("w:1", "not restarted: w:0 failed")]


def test_a_roll_of_many_that_start_at_once_does_not_recurse(tmp_path: Path) -> None:
    h = Harness(tmp_path, 3000, startsecs="0")
    h.roll()  # each start is RUNNING at once: the whole roll happens in this call
    assert h.outcome is not None and all(why is None for _, why in h.outcome)
    assert set(h.states()) == {"RUNNING"}


def test_a_held_instance_is_refused_until_the_roll_ends(tmp_path: Path) -> None:
    h = Harness(tmp_path, 2)
    h.run_all()
    h.roll()
    with pytest.raises(RollBusy, match="a rolling restart of w:1 is under way"):
        h.rolls.check_free([h.instances[1]])
    h.rolls.end_rolls_of([h.instances[1]], "was stopped")
    assert h.results() == [("w:0", "rolling restart ended: w:1 was stopped"),
                           ("w:1", "not restarted: rolling restart ended (w:1 was stopped)")]
    h.rolls.check_free(h.instances)
    h.replace_process(h.instances[0])  # the turn's waiter outlives the roll, harmlessly
    assert h.states() == ["RUNNING", "RUNNING"]
