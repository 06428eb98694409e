"""The memory guard without a daemon: real Instances on a fake runtime, a
fake RSS reader and a fake timer, so each check is one call."""

from __future__ import annotations

import errno
import itertools
import os
import resource
import signal
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from superd.cli import event_line
from superd.config import load
from superd.events import memory_event
from superd.memory import CHECK_EVERY, MemoryGuard, ProcGroupRss, Run, next_run
from superd.states import Event, State
from superd.worker import Instance
from support import reap_adopted, wait_for

MiB = 1 << 20
LIMIT = 100 * MiB


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A schedule (the loop's call_later) whose timers fire when told."""

    def __init__(self) -> None:
        self.made: list[FakeTimer] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self.made.append(FakeTimer(delay, callback))
        return self.made[-1]

    def live(self) -> list[FakeTimer]:
        return [timer for timer in self.made if not timer.cancelled]

    def fire(self) -> None:
        (timer,) = self.live()
        timer.cancelled = True
        timer.callback()


class Runtime:
    """Instance's runtime, telling the guard of each transition as Supervisor does."""

    def __init__(self) -> None:
        self.pids = itertools.count(100)
        self.signals: list[tuple[int, int]] = []
        self.guard: MemoryGuard | None = None

    def spawn(self, instance: Instance) -> int:
        return next(self.pids)

    def killpg(self, pgid: int, signum: int) -> None:
        self.signals.append((pgid, signum))

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        return FakeTimer(delay, callback)  # the instances' own timers: never fired here

    def transition(self, instance: Instance, old: State, new: State) -> None:
        assert self.guard is not None
        self.guard.update(instance)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.runtime = Runtime()
        self.timers = Timers()
        self.rss: dict[int, int] = {}  # what the fake reader reads, by leader
        self.asked: list[set[int]] = []
        self.events: list[dict[str, Any]] = []
        self.guard = MemoryGuard(self.timers, self.read, self.events.append)
        self.runtime.guard = self.guard

    def read(self, leaders: set[int]) -> dict[int, int]:
        self.asked.append(leaders)
        return {pid: self.rss[pid] for pid in leaders if pid in self.rss}

    def running(self, max_memory: int | None, name: str = "w") -> Instance:
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(f"workers:\n  {name}:\n    command: [sleep, '1']\n")
        config = replace(load(str(path)).workers[name], startsecs=0.0, max_memory=max_memory)
        instance = Instance(config, 0, self.runtime)
        instance.handle(Event.START)
        assert instance.state is State.RUNNING
        return instance

    def check(self, readings: dict[int, int | None]) -> None:
        """One check, the groups reading as given (None: no reading)."""
        self.rss = {pid: rss for pid, rss in readings.items() if rss is not None}
        self.timers.fire()


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_next_run_counts_readings_above_in_a_row_for_one_pid() -> None:
    run = Run(7)
    assert next_run(run, 7, LIMIT + 1, LIMIT) == Run(7, 1)
    assert next_run(Run(7, 1), 7, LIMIT + 1, LIMIT) == Run(7, 2)
    assert next_run(Run(7, 1), 7, LIMIT, LIMIT) == Run(7, 0)  # at the limit is not above
    assert next_run(Run(7, 1), 7, None, LIMIT) == Run(7, 0)  # no reading ends the run
    assert next_run(Run(7, 1), 8, LIMIT + 1, LIMIT) == Run(8, 1)  # a new process starts at 1


def test_two_checks_in_a_row_restart_and_dips_misses_and_new_pids_reset(setup: Setup) -> None:
    capped = setup.running(LIMIT)
    setup.running(None, "free")  # never read: it has no limit
    pid = capped.pid
    assert pid is not None
    assert [t.delay for t in setup.timers.live()] == [CHECK_EVERY]
    setup.check({pid: LIMIT + MiB})
    setup.check({pid: LIMIT - MiB})  # a dip below ends the run
    setup.check({pid: LIMIT + MiB})
    setup.check({pid: None})  # gone from /proc, or unreadable: ends it too
    setup.check({pid: LIMIT + MiB})
    assert setup.events == [] and capped.state is State.RUNNING
    capped.died(0)  # autorestart: a new process, which starts from zero
    new = capped.pid
    assert new is not None and new != pid and capped.state is State.RUNNING
    setup.check({new: 2 * LIMIT})
    assert setup.events == [] and capped.restarts == 1
    setup.check({new: 3 * LIMIT})
    assert capped.state is State.STOPPING and capped.restarts == 2
    assert setup.runtime.signals[-1] == (new, signal.SIGTERM)
    (event,) = setup.events
    assert {k: event[k] for k in ("event", "name", "pid", "rss_bytes", "max_memory")} == {
        "event": "memory", "name": "w", "pid": new, "rss_bytes": 3 * LIMIT,
        "max_memory": LIMIT}
    assert all(leaders == {pid} for leaders in setup.asked[:5])
    # Nothing with a limit runs any more: no timer is left.
    assert not setup.guard.armed and setup.timers.live() == []


def test_the_timer_runs_only_while_a_running_instance_has_a_limit(setup: Setup) -> None:
    free = setup.running(None, "free")
    assert not setup.guard.armed and setup.timers.made == []
    capped = setup.running(LIMIT)
    assert setup.guard.armed
    setup.check({})
    assert len(setup.timers.live()) == 1  # the next check, armed before this one read
    capped.handle(Event.STOP)
    assert not setup.guard.armed and setup.timers.live() == []
    free.handle(Event.STOP)
    capped.died(0)
    capped.handle(Event.START)  # running again: armed again
    assert setup.guard.armed and len(setup.timers.live()) == 1


def test_a_changed_limit_applies_at_the_next_check(setup: Setup) -> None:
    instance = setup.running(None)
    assert not setup.guard.armed
    instance.reconfigure(replace(instance.config, max_memory=LIMIT))
    setup.guard.review([instance])  # a reload that moved no state
    assert setup.guard.armed
    pid = instance.pid
    assert pid is not None
    setup.check({pid: LIMIT + 1})
    instance.reconfigure(replace(instance.config, max_memory=4 * LIMIT))
    setup.check({pid: LIMIT + 1})  # above the old limit, not the new one: the run ends
    assert instance.state is State.RUNNING
    instance.reconfigure(replace(instance.config, max_memory=None))
    setup.check({pid: LIMIT + 1})
    assert not setup.guard.armed and setup.events == []


def test_a_reexec_carries_the_runs_of_the_processes_that_still_run(setup: Setup) -> None:
    kept, renewed = setup.running(LIMIT, "kept"), setup.running(LIMIT, "renewed")
    assert kept.pid is not None and renewed.pid is not None
    setup.check({kept.pid: LIMIT + 1, renewed.pid: LIMIT + 1})
    saved = setup.guard.snapshot()
    assert saved == {"kept": [kept.pid, 1], "renewed": [renewed.pid, 1]}
    saved["renewed"][0] = 9999  # as if its process had changed
    after = Setup(setup.tmp_path)
    after.guard.review([kept, renewed])
    after.guard.resume(saved)
    after.check({kept.pid: LIMIT + 1, renewed.pid: LIMIT + 1})
    assert [event["name"] for event in after.events] == ["kept"]
    # What an older image hands over has no runs: everything starts at zero.
    Setup(setup.tmp_path).guard.resume({})


def test_group_rss_reads_the_whole_group_of_a_real_process() -> None:
    group = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    read = ProcGroupRss(is_leader=lambda pid: False)
    try:
        wait_for(lambda: len(read.groups.find({group.pid}).get(group.pid, [])) == 3,
                 what="3 members")
        members = read.groups.find({group.pid})[group.pid]
        rss = read({group.pid, 999_999_999})  # the second is no process: no reading
        assert set(rss) == {group.pid}
        # Read twice, a moment apart: the members may still be touching pages.
        assert abs(rss[group.pid] - read.groups.rss(members)) < 1 << 20
        assert rss[group.pid] > 3 * (100 << 10)
    finally:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait()
        reap_adopted()


class FdsExhausted:
    """While in the block, this process can open no more fds (EMFILE)."""

    def __enter__(self) -> None:
        self.limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.held: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, self.limits[1]))
        with pytest.raises(OSError) as full:
            while True:
                self.held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        assert full.value.errno == errno.EMFILE

    def __exit__(self, *exc: object) -> None:
        for fd in self.held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)


def test_out_of_fds_a_check_is_a_missed_reading(tmp_path: Path) -> None:
    group = subprocess.Popen(["sleep", "30"], start_new_session=True)
    setup = Setup(tmp_path)
    setup.guard.read = ProcGroupRss(is_leader=lambda pid: False)  # the real /proc
    setup.runtime.pids = itertools.repeat(group.pid)
    try:
        capped = setup.running(1)  # a limit any process is above
        setup.timers.fire()
        with FdsExhausted():
            setup.timers.fire()  # nothing can be opened: a missed reading, no error
        setup.timers.fire()
        assert capped.state is State.RUNNING and setup.events == []
        setup.timers.fire()  # two readings in a row at last
        assert capped.state is State.STOPPING
        assert setup.events[0]["pid"] == group.pid and setup.events[0]["rss_bytes"] > 1
    finally:
        group.kill()
        group.wait()


def test_superctl_events_prints_a_memory_event_as_one_line() -> None:
    line = event_line(memory_event("api", 5801, 584 * MiB, 512 * MiB))
    assert line.split(" ", 1)[1] == "api memory 584.0M above max_memory 512.0M pid 5801; " \
        "restarting"
