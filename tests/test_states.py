"""The state machine without processes: a fake runtime stands in for fork/kill/timers."""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import random
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from superd.config import BackoffConfig, ReadyConfig, WorkerConfig, load
from superd.registry import Registry
from superd.states import ALLOWED, TRANSITIONS, Event, State
from superd.status import StatusReport, description
from superd.worker import Instance, backoff_delay, random_unit


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeRuntime:
    def __init__(self) -> None:
        self.pids = itertools.count(100)
        self.signals: list[tuple[int, int]] = []
        self.timers: list[FakeTimer] = []
        self.moves: list[tuple[State, State]] = []
        self.fail_spawn = False
        self.spawn_error: OSError | None = None

    def spawn(self, instance: Instance) -> int:
        if self.fail_spawn:
            raise OSError("no fork for you")
        if self.spawn_error is not None:
            raise self.spawn_error
        return next(self.pids)

    def killpg(self, pgid: int, signum: int) -> None:
        self.signals.append((pgid, signum))

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.timers.append(timer)
        return timer

    def transition(self, instance: Instance, old: State, new: State) -> None:
        self.moves.append((old, new))

    def fire(self) -> FakeTimer:
        """Run the one live timer, as the loop would at its deadline."""
        live = [timer for timer in self.timers if not timer.cancelled]
        assert len(live) == 1, live
        live[0].cancelled = True
        live[0].callback()
        return live[0]


def make_worker(tmp_path: Path, **changes: object) -> WorkerConfig:
    path = tmp_path / "superd.yaml"
    path.write_text("workers:\n  w:\n    command: [sleep, '1']\n")
    return replace(load(str(path)).workers["w"], **changes)  # type: ignore[arg-type]


EXIT_1 = 1 << 8  # a wait status for "exited with code 1"


def test_table_is_total_and_names_real_handlers() -> None:
    for state in State:
        for event in Event:
            handler = TRANSITIONS[(state, event)]
            assert hasattr(Instance, "_" + handler), handler
    assert set(ALLOWED) == set(State)


def test_start_up_and_run(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startsecs=1.0), 0, runtime)
    instance.handle(Event.START)
    assert instance.state is State.STARTING and instance.pid == 100
    assert runtime.fire().delay == 1.0
    assert instance.state is State.RUNNING
    assert runtime.moves == [(State.STOPPED, State.STARTING), (State.STARTING, State.RUNNING)]


def test_startretries_allows_n_retries_then_fatal(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startretries=2), 0, runtime)
    instance.handle(Event.START)
    spawns = 1
    while instance.state is not State.FATAL:
        instance.died(EXIT_1)
        if instance.state is State.BACKOFF:
            runtime.fire()
            spawns += 1
    assert spawns == 3  # the first try + 2 retries
    assert instance.exit_status == 1
    instance.handle(Event.START)  # a user start leaves FATAL
    assert instance.state is State.STARTING and instance.failures == 0


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startsecs=0.0, stoptimeout=2.0), 0, runtime)
    instance.handle(Event.START)
    assert instance.state is State.RUNNING
    instance.handle(Event.STOP)
    assert runtime.signals == [(100, signal.SIGTERM)]
    assert runtime.fire().delay == 2.0
    assert runtime.signals[-1] == (100, signal.SIGKILL)
    instance.died(signal.SIGKILL)  # wait status of a death by SIGKILL
    assert instance.state is State.STOPPED and instance.exit_status == -signal.SIGKILL


@pytest.mark.parametrize(("policy", "status", "restarts"), [
    ("always", EXIT_1, True), ("always", 0, True), ("never", EXIT_1, False),
    ("on-failure", 0, False), ("on-failure", EXIT_1, True), ("on-failure", signal.SIGKILL, True),
])
def test_autorestart_policy(tmp_path: Path, policy: str, status: int, restarts: bool) -> None:
    runtime = FakeRuntime()
    worker = make_worker(tmp_path, startsecs=0.0, autorestart=policy, exitcodes=(0,))
    instance = Instance(worker, 0, runtime)
    instance.handle(Event.START)
    instance.died(status)
    if restarts:
        assert instance.state is State.RUNNING and instance.restarts == 1
    else:
        assert instance.state is State.EXITED and instance.restarts == 0


def test_restart_while_stopping_starts_after_the_stop(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startsecs=0.0), 0, runtime)
    instance.handle(Event.START)
    instance.handle(Event.STOP)
    instance.handle(Event.START)
    assert instance.state is State.STOPPING
    instance.died(signal.SIGTERM)
    assert instance.state is State.RUNNING and instance.pid == 101
    assert (State.STOPPING, State.STOPPED) in runtime.moves


def test_fork_failure_is_a_failed_start(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.fail_spawn = True
    instance = Instance(make_worker(tmp_path), 0, runtime)
    instance.handle(Event.START)
    assert instance.state is State.BACKOFF and instance.pid is None


def test_stop_during_backoff_cancels_the_retry(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path), 0, runtime)
    instance.handle(Event.START)
    instance.died(EXIT_1)
    assert instance.state is State.BACKOFF
    instance.handle(Event.STOP)
    assert instance.state is State.STOPPED
    assert all(timer.cancelled for timer in runtime.timers)


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(0.1, 1.0, failures, rng.random()) for failures in range(1, 10)]
    assert 0.05 <= delays[0] <= 0.1
    assert max(delays) <= 1.0
    assert delays[3] > 0.4  # 0.8 nominal, at least half of it
    assert len(set(delays[5:])) > 1  # capped ones still spread out


def test_the_daemons_jitter_is_uniform_in_the_unit_interval() -> None:
    units = [random_unit() for _ in range(4000)]
    assert all(0.0 <= unit < 1.0 for unit in units)
    assert 0.45 < sum(units) / len(units) < 0.55
    assert min(units) < 0.05 and max(units) > 0.95


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


EMFILE_CAUSE = "cannot start: Too many open files (EMFILE); retrying"


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM])
def test_lack_of_resources_waits_in_backoff_and_counts_no_try(tmp_path: Path, code: int) -> None:
    runtime = FakeRuntime()
    worker = make_worker(tmp_path, startsecs=0.0, startretries=1,
                         backoff=BackoffConfig(initial=0.1, max=0.4))
    instance = Instance(worker, 0, runtime)
    runtime.spawn_error = os_error(code)
    instance.handle(Event.START)
    assert instance.state is State.BACKOFF and instance.pid is None
    assert instance.shortage == (f"cannot start: {os.strerror(code)} "
                                 f"({errno.errorcode[code]}); retrying")
    delays = [runtime.fire().delay for _ in range(10)]  # far more than startretries
    assert instance.state is State.BACKOFF and instance.failures == 0
    assert max(delays) <= 0.4 and delays[-1] > 0.1  # grows, capped
    assert runtime.moves == [(State.STOPPED, State.BACKOFF)]  # stays: one move only
    runtime.spawn_error = None
    runtime.fire()
    assert instance.state is State.RUNNING and instance.shortage is None
    assert instance.restarts == 0  # a user's start that waited, not a restart


def test_a_shortage_on_restart_is_one_restart_and_shown_in_status(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startsecs=0.0, startretries=0), 0, runtime)
    instance.handle(Event.START)
    runtime.spawn_error = os_error(errno.EMFILE)
    instance.died(EXIT_1)  # RUNNING -> EXITED -> autorestart, which cannot spawn
    assert instance.state is State.BACKOFF and instance.restarts == 1
    assert description(instance) == EMFILE_CAUSE
    for _ in range(5):
        runtime.fire()
    assert instance.state is State.BACKOFF and instance.restarts == 1
    runtime.spawn_error = None
    runtime.fire()
    assert instance.state is State.RUNNING and instance.restarts == 1
    assert description(instance) == ""


def test_a_shortage_after_real_failures_does_not_count_either(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startretries=1), 0, runtime)
    instance.handle(Event.START)
    instance.died(EXIT_1)  # a real failed start: 1 of the 2 tries
    assert instance.state is State.BACKOFF and instance.failures == 1
    runtime.spawn_error = os_error(errno.EAGAIN)
    for _ in range(5):
        runtime.fire()
    assert instance.state is State.BACKOFF and instance.failures == 1
    runtime.spawn_error = None
    runtime.fire()
    assert instance.state is State.STARTING
    instance.died(EXIT_1)  # the second real failure: now FATAL
    assert instance.state is State.FATAL
    assert description(instance) == "exit 1"


def test_stop_while_short_of_resources(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path), 0, runtime)
    runtime.spawn_error = os_error(errno.ENFILE)
    instance.handle(Event.START)
    instance.handle(Event.STOP)
    assert instance.state is State.STOPPED and instance.shortage is None
    assert all(timer.cancelled for timer in runtime.timers)


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOENT, None])
def test_other_spawn_errors_are_failed_starts(tmp_path: Path, code: int | None) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startretries=0), 0, runtime)
    runtime.spawn_error = OSError("no") if code is None else os_error(code)
    instance.handle(Event.START)
    assert instance.state is State.FATAL and instance.shortage is None


@pytest.mark.parametrize("ready", [ReadyConfig("notify"), ReadyConfig("tcp", 8080)])
def test_start_timeout_not_startsecs_bounds_readiness(tmp_path: Path, ready: ReadyConfig) -> None:
    runtime = FakeRuntime()
    worker = make_worker(tmp_path, ready=ready, startsecs=1.0, start_timeout=5.0)
    instance = Instance(worker, 0, runtime)
    instance.handle(Event.START)
    [timer] = runtime.timers
    assert timer.delay == 5.0  # startsecs (1 s) plays no part
    instance.handle(Event.UP)
    assert instance.state is State.RUNNING and timer.cancelled


def test_start_timeout_zero_waits_for_ever(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    worker = make_worker(tmp_path, ready=ReadyConfig("notify"), start_timeout=0.0)
    instance = Instance(worker, 0, runtime)
    instance.handle(Event.START)
    assert instance.state is State.STARTING and runtime.timers == []


def test_startretries_forever_never_gives_up(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startretries=math.inf), 0, runtime)
    instance.handle(Event.START)
    for _ in range(200):
        instance.died(EXIT_1)
        assert instance.state is State.BACKOFF
        runtime.fire()
    assert instance.failures == 200 and instance.state is State.STARTING


def test_ready_at_once_leaves_no_start_timer_behind(tmp_path: Path) -> None:
    """A TCP probe may connect while STARTING is announced: the try's start
    timer must be gone then, or it would kill a later try early."""
    runtime = FakeRuntime()
    config = make_worker(tmp_path, ready=ReadyConfig("tcp", 8080), start_timeout=5.0)
    instance = Instance(config, 0, runtime)
    announce = runtime.transition

    def ready_when_starting(instance: Instance, old: State, new: State) -> None:
        announce(instance, old, new)
        if new is State.STARTING:
            instance.handle(Event.UP)

    runtime.transition = ready_when_starting  # type: ignore[method-assign]
    instance.handle(Event.START)
    assert instance.state is State.RUNNING
    assert not [timer for timer in runtime.timers if not timer.cancelled]


class DroppedBytes:
    """What StatusReport asks of Logs: the dropped bytes of an instance."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def dropped_by_instance(self) -> dict[str, int]:
        return self.counts


def test_status_rows_follow_every_change_of_an_instance(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    registry, logs = Registry(), DroppedBytes()
    instance = Instance(make_worker(tmp_path, startsecs=0.0), 0, runtime)
    registry.replace([instance])
    report = StatusReport(registry, logs)  # type: ignore[arg-type]

    def row() -> dict[str, object]:
        [only] = json.loads(report.rows_json([instance]))
        assert isinstance(only, dict)
        return only

    assert row() == {"name": "w", "worker": "w", "state": "STOPPED", "pid": None,
                     "uptime": None, "restarts": 0, "exit_status": None,
                     "cpu_percent": None, "rss_bytes": None, "description": "",
                     "status_text": "", "log_dropped_bytes": 0, "health": None}
    instance.handle(Event.START)
    assert (row()["state"], row()["pid"]) == ("RUNNING", instance.pid)
    instance.report_status('half "done" \u2014 ok\n')
    logs.counts["w"] = 7
    assert (row()["status_text"], row()["log_dropped_bytes"]) == ('half "done" \u2014 ok\n', 7)
    instance.died(EXIT_1)
    assert row()["exit_status"] == 1 and row()["restarts"] == 1
    successor = Instance(make_worker(tmp_path, startsecs=0.0), 0, runtime)
    registry.replace([successor])  # a reload: same name, a new instance
    [fresh] = json.loads(report.rows_json([successor]))
    assert (fresh["state"], fresh["restarts"], fresh["status_text"]) == ("STOPPED", 0, "")


def handed_over(instance: Instance, tmp_path: Path, **changes: object) \
        -> tuple[Instance, FakeRuntime]:
    """The instance as a new image takes it over: a JSON round trip of its snapshot."""
    runtime = FakeRuntime()
    successor = Instance(make_worker(tmp_path, **changes), instance.index, runtime)
    successor.resume(json.loads(json.dumps(instance.snapshot())))
    return successor, runtime


def test_a_handed_over_instance_is_the_same_and_makes_no_transition(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startsecs=0.0), 0, runtime)
    instance.handle(Event.START)
    instance.died(EXIT_1)  # restarted at once: restarts 1, a new pid
    instance.report_status("serving")
    successor, new_runtime = handed_over(instance, tmp_path, startsecs=0.0)
    assert successor.snapshot() == instance.snapshot()
    assert successor.state is State.RUNNING and successor.pid == instance.pid
    assert new_runtime.moves == [] and new_runtime.timers == []


@pytest.mark.parametrize(("setup", "state", "event_after"), [
    ("starting", State.STARTING, State.RUNNING),  # startsecs elapse: UP
    ("backoff", State.BACKOFF, State.STARTING),  # the retry spawns again
    ("stopping", State.STOPPING, State.STOPPING),  # stoptimeout: SIGKILL, still STOPPING
])
def test_a_handed_over_timer_runs_on_for_the_time_it_had_left(
        tmp_path: Path, setup: str, state: State, event_after: State) -> None:
    runtime = FakeRuntime()
    changes: dict[str, object] = {"startsecs": 30.0, "stoptimeout": 30.0,
                                  "backoff": BackoffConfig(initial=30.0, max=30.0)}
    instance = Instance(make_worker(tmp_path, **changes), 0, runtime)
    instance.handle(Event.START)
    if setup == "backoff":
        instance.died(EXIT_1)  # a failed start: BACKOFF, its retry timer armed
    elif setup == "stopping":
        runtime.fire()  # startsecs: RUNNING
        instance.handle(Event.STOP)
    assert instance.state is state
    [armed] = [timer for timer in runtime.timers if not timer.cancelled]
    successor, new_runtime = handed_over(instance, tmp_path, **changes)
    [resumed] = new_runtime.timers
    assert successor.state is state and 0 < resumed.delay <= armed.delay
    new_runtime.fire()
    assert successor.state is event_after
    if setup == "stopping":
        assert new_runtime.signals[-1] == (successor.pid, signal.SIGKILL)


def test_a_fired_timer_is_not_handed_over(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    instance = Instance(make_worker(tmp_path, startsecs=1.0), 0, runtime)
    instance.handle(Event.START)
    runtime.fire()  # RUNNING: nothing is due any more
    assert instance.snapshot()["timer"] is None
    successor, new_runtime = handed_over(instance, tmp_path, startsecs=1.0)
    assert successor.state is State.RUNNING and new_runtime.timers == []
