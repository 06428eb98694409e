"""The daemon's own log, in-process: a fake clock, fake timers, a failing fd."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superd.daemonlog import (
    MAX_CAUSES,
    DaemonLog,
    LogWriter,
    RepeatLimiter,
    SecondsFormatter,
    cause,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class FakeTimers:
    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> object:
        self.pending.append((delay, callback))
        return None

    def fire(self) -> float:
        [(delay, callback)] = self.pending
        self.pending.clear()
        callback()
        return delay


def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("superd", level, __file__, 1, msg, args, None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def out() -> Collect:
    return Collect()


def test_a_repeat_within_a_second_is_held_back_then_counted(
        clock: FakeClock, out: Collect) -> None:
    limiter = RepeatLimiter(out, clock)
    for step in range(50):  # 50 in 0.98 s
        clock.now = 1000.0 + step * 0.02
        limiter.handle(record("%s: cannot start: %s", "web", "Too many open files"))
    assert out.lines == ["web: cannot start: Too many open files"]
    clock.now = 1001.0
    limiter.handle(record("%s: cannot start: %s", "web", "Too many open files"))
    assert out.lines[1] == ("web: cannot start: Too many open files "
                            "(repeated 49 times in the last 1.0s)")
    clock.now = 1001.5
    limiter.handle(record("%s: cannot start: %s", "web", "Too many open files"))
    assert len(out.lines) == 2  # the count started over: one line a second at most
    clock.now = 1005.0
    limiter.handle(record("%s: cannot start: %s", "web", "Too many open files"))
    assert out.lines[2].endswith("(repeated 1 time in the last 4.0s)")


def test_different_causes_are_never_merged_but_numbers_do_not_count(
        clock: FakeClock, out: Collect) -> None:
    limiter = RepeatLimiter(out, clock)
    limiter.handle(record("%s: %s -> %s (pid %d)", "web", "STOPPED", "STARTING", 100))
    limiter.handle(record("%s: %s -> %s (pid %d)", "web", "STARTING", "RUNNING", 100))
    limiter.handle(record("%s: %s -> %s (pid %d)", "api", "STOPPED", "STARTING", 101))
    limiter.handle(record("%s: %s -> %s (pid %d)", "web", "STOPPED", "STARTING", 102))
    assert out.lines == ["web: STOPPED -> STARTING (pid 100)",
                         "web: STARTING -> RUNNING (pid 100)",
                         "api: STOPPED -> STARTING (pid 101)"]
    assert cause(record("x %d", 1)) == cause(record("x %d", 2))
    assert cause(record("x %s", True)) != cause(record("x %s", False))
    assert cause(record("x", level=logging.INFO)) != cause(record("x"))


def test_with_timers_the_count_comes_when_the_window_ends(clock: FakeClock, out: Collect) -> None:
    limiter = RepeatLimiter(out, clock)
    timers = FakeTimers()
    limiter.use_timers(timers)
    limiter.handle(record("accept failed: %s", "EMFILE"))
    assert timers.pending == []  # nothing held back: no timer, an idle daemon sleeps
    clock.now += 0.25
    for _ in range(3):
        limiter.handle(record("accept failed: %s", "EMFILE"))
    assert len(timers.pending) == 1  # one timer, however many repeats
    clock.now += 0.75
    assert timers.fire() == pytest.approx(0.75)
    assert out.lines == ["accept failed: EMFILE",
                         "accept failed: EMFILE (repeated 3 times in the last 1.0s)"]
    assert timers.pending == []  # nothing more held back: no more wake-ups


def test_flush_writes_what_is_held_back(clock: FakeClock, out: Collect) -> None:
    limiter = RepeatLimiter(out, clock)
    limiter.handle(record("boom %s", "a"))
    limiter.handle(record("boom %s", "a"))
    clock.now += 0.5
    limiter.flush_repeats()
    assert out.lines[-1] == "boom a (repeated 1 time in the last 0.5s)"
    limiter.flush_repeats()
    assert len(out.lines) == 2


def test_many_causes_stay_bounded(clock: FakeClock, out: Collect) -> None:
    limiter = RepeatLimiter(out, clock)
    for number in range(MAX_CAUSES * 3):
        limiter.handle(record("unique %s", str(number)))
    assert len(out.lines) == MAX_CAUSES * 3
    assert len(limiter._seen) <= MAX_CAUSES


@pytest.fixture
def dev_full() -> Iterator[int]:
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def test_a_failing_daemon_log_reports_once_per_episode(dev_full: int) -> None:
    writer = LogWriter(dev_full, "/var/log/superd.log")
    writer.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    reports: list[tuple[str, str]] = []
    writer.on_failure = lambda path, message: reports.append((path, message))
    for number in range(3):
        writer.handle(record("line %d", number))
    assert reports == [("/var/log/superd.log", "No space left on device")]
    assert writer.lost == 3
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        writer.fd = write_end  # room again
        writer.handle(record("back"))
        assert os.read(read_end, 4096) == b"WARNING writing this log again (lines lost: 3)\n" \
                                          b"ERROR back\n"
    finally:
        os.close(read_end)
        os.close(write_end)
    writer.fd = dev_full
    writer.handle(record("again"))
    assert len(reports) == 2  # a new episode is told again


def test_daemon_log_publishes_from_the_loop_with_name_null(dev_full: int) -> None:
    writer = LogWriter(dev_full, "/x/superd.log")
    own_log = DaemonLog(writer, RepeatLimiter(writer))
    timers = FakeTimers()
    published: list[dict[str, object]] = []
    own_log.attach(timers, published.append)
    own_log.limiter.handle(record("cannot write"))
    assert published == []  # not from inside the failed write
    assert timers.fire() == 0.0
    [event] = published
    assert event["event"] == "log_error" and event["name"] is None
    assert event["path"] == "/x/superd.log" and event["message"] == "No space left on device"
    own_log.detach()
    assert writer.on_failure is None


@given(st.floats(min_value=0, max_value=4e9))
def test_the_seconds_formatter_writes_what_logging_writes(created: float) -> None:
    fmt = "%(asctime)s %(levelname)s %(message)s"
    record = logging.makeLogRecord({"msg": "a line", "levelname": "INFO", "levelno": 20})
    record.created, record.msecs = created, (created - int(created)) * 1000
    assert SecondsFormatter(fmt).format(record) == logging.Formatter(fmt).format(record)
