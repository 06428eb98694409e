"""The loop's fault boundary, in-process: a failing callback costs only itself."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from superd.loop import Loop


@pytest.fixture
def loop() -> Iterator[Loop]:
    previous = signal.getsignal(signal.SIGUSR1)
    loop = Loop()
    try:
        yield loop
    finally:
        loop.close()
        signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def superd_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="superd")
    return caplog


def boom() -> None:
    raise RuntimeError("boom")


def stop_within(loop: Loop, seconds: float = 5.0) -> None:
    """A safety net: the test fails rather than hangs if the loop never stops."""
    loop.call_later(seconds, lambda: pytest.fail("the loop did not stop"))


def test_a_raising_timer_is_logged_and_the_loop_goes_on(
        loop: Loop, superd_log: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []
    loop.call_later(0, boom)
    loop.call_later(0.01, lambda: (ran.append("later"), loop.stop()))
    stop_within(loop)
    loop.run()
    assert ran == ["later"]
    [record] = superd_log.records
    assert "unhandled error in timer" in record.getMessage() and "boom" in record.getMessage()
    assert record.exc_info is not None and "RuntimeError: boom" in superd_log.text


def test_a_raising_signal_callback_is_logged_and_kept(
        loop: Loop, superd_log: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        if len(calls) == 2:
            loop.stop()
        raise RuntimeError("handler broke")

    loop.add_signal(signal.SIGUSR1, failing)
    loop.call_later(0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    loop.call_later(0.05, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    stop_within(loop)
    loop.run()
    assert len(calls) == 2  # still registered after the first failure
    assert len(superd_log.records) == 2
    assert "SIGUSR1 handler" in superd_log.records[0].getMessage()


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made: list[tuple[int, int]] = []
    yield made
    for read_end, write_end in made:
        os.close(read_end)
        os.close(write_end)


def pipe(pipes: list[tuple[int, int]], data: bytes = b"") -> tuple[int, int]:
    ends = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pipes.append(ends)
    if data:
        os.write(ends[1], data)
    return ends


def test_a_raising_reader_is_paused_not_spun(
        loop: Loop, superd_log: pytest.LogCaptureFixture, pipes: list[tuple[int, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("superd.loop.FD_PAUSE", 0.2)
    read_end, _ = pipe(pipes, b"x")
    other_read, _ = pipe(pipes, b"y")
    calls: list[float] = []
    served: list[bytes] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("reader broke")  # never consumes: level-triggered, ready forever

    loop.add_reader(read_end, broken)
    loop.add_reader(other_read, lambda: served.append(os.read(other_read, 10)))
    loop.call_later(0.1, lambda: calls.append(-1.0))  # a marker: where 0.1 s is
    loop.call_later(0.3, loop.stop)
    stop_within(loop)
    loop.run()
    # Once, then paused (no busy loop, no log flood), then called again after the pause.
    assert len(calls) == 3 and calls[1] == -1.0 and calls[2] - calls[0] >= 0.2
    assert served == [b"y"]  # the other fd is served as before
    assert len(superd_log.records) == 2
    message = superd_log.records[0].getMessage()
    assert f"fd {read_end} reader" in message and "broken" in message
    assert "paused for 0.2s" in message
    loop.remove_reader(read_end)


def test_the_owner_ends_or_replaces_a_paused_registration(
        loop: Loop, superd_log: pytest.LogCaptureFixture, pipes: list[tuple[int, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("superd.loop.FD_PAUSE", 0.05)
    removed, _ = pipe(pipes, b"x")
    replaced, _ = pipe(pipes, b"x")
    calls: list[str] = []

    def broken(name: str) -> Callable[[], None]:
        def callback() -> None:
            calls.append(name)
            raise RuntimeError(name)
        return callback

    def working() -> None:
        calls.append("new")
        os.read(replaced, 1)

    loop.add_reader(removed, broken("removed"))
    loop.add_reader(replaced, broken("replaced"))
    loop.call_later(0.01, lambda: loop.remove_reader(removed))
    loop.call_later(0.01, lambda: loop.add_reader(replaced, working))
    loop.call_later(0.2, loop.stop)
    stop_within(loop)
    loop.run()
    assert sorted(calls) == ["new", "removed", "replaced"]  # neither old one came back
    assert not loop.has_reader(removed) and loop.has_reader(replaced)
    loop.remove_reader(replaced)


def test_a_raising_writer_keeps_the_fds_reader(
        loop: Loop, superd_log: pytest.LogCaptureFixture) -> None:
    left, right = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        loop.add_reader(left, lambda: None)
        loop.add_writer(right, boom)
        loop.call_later(0.05, loop.stop)
        loop.run()
        assert not loop.has_writer(right) and loop.has_reader(left)
        assert len(superd_log.records) == 1
        loop.remove_reader(left)
    finally:
        os.close(left)
        os.close(right)


def test_a_failure_of_the_machinery_leaves_run(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_select(timeout: float | None) -> list[object]:
        raise OSError("selector broke")

    monkeypatch.setattr(loop._selector, "select", broken_select)
    with pytest.raises(OSError, match="selector broke"):
        loop.run()


def test_an_event_of_an_fd_closed_in_the_same_round_reaches_no_one(loop: Loop) -> None:
    """Two pipes ready at once: the first one's callback closes the second and
    opens a new, empty pipe that takes its fd number (as a reaped worker's pipe
    is replaced by its successor's).  The stale event must not reach the new
    reader; the new pipe's own data later must."""
    first_read, first_write = os.pipe()
    second_read, second_write = os.pipe()
    os.write(first_write, b"x")
    os.write(second_write, b"x")
    calls: list[str] = []
    fresh: list[int] = []

    def on_fresh() -> None:
        try:
            calls.append("fresh:" + os.read(fresh[0], 1).decode())
        except BlockingIOError:
            calls.append("fresh, but empty")  # woken by the stale event
            return
        loop.stop()

    def on_any(fd: int, other: int) -> Callable[[], None]:
        def callback() -> None:
            os.read(fd, 1)
            calls.append("first")
            loop.remove_reader(fd)
            loop.remove_reader(other)
            os.close(other)
            new_read, new_write = os.pipe()
            if new_read != other:  # the kernel gives the lowest free number: other's
                os.dup2(new_read, other)
                os.close(new_read)
            os.set_blocking(other, False)
            fresh.append(other)
            loop.add_reader(other, on_fresh)
            loop.call_later(0.05, lambda: os.write(new_write, b"y"))
        return callback

    loop.add_reader(first_read, on_any(first_read, second_read))
    loop.add_reader(second_read, on_any(second_read, first_read))
    stop_within(loop)
    loop.run()
    assert calls == ["first", "fresh:y"]
