"""The loop's fault boundary, in-process: a failing callback costs only itself."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator

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


def test_a_raising_reader_is_dropped_not_spun(
        loop: Loop, superd_log: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    other_read, other_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    calls: list[int] = []
    served: list[bytes] = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("reader broke")  # never consumes: level-triggered, ready forever

    try:
        loop.add_reader(read_end, broken)
        loop.add_reader(other_read, lambda: served.append(os.read(other_read, 10)))
        os.write(write_end, b"x")
        os.write(other_write, b"y")
        loop.call_later(0.1, loop.stop)
        loop.run()
        assert calls == [1]  # once, then dropped: no busy loop, no log flood
        assert not loop.has_reader(read_end)
        assert served == [b"y"]  # the other fd is served as before
        [record] = superd_log.records
        assert f"fd {read_end} reader" in record.getMessage()
        assert "dropped" in record.getMessage()
        loop.add_reader(read_end, lambda: None)  # its owner may register it again
        loop.remove_reader(read_end)
    finally:
        for fd in (read_end, write_end, other_read, other_write):
            os.close(fd)


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
