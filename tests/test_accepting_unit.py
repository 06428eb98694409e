"""The acceptor in-process: a real Loop and a real listening socket whose
accept() fails on purpose, so batching, backoff and the log lines are seen."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from superd.accepting import Acceptor
from superd.loop import Loop
from support import run_loop_until


class FailingListener(socket.socket):
    """A listening socket whose accept() raises `error` while `failures` last."""

    failures = 0
    error = errno.ENOBUFS
    attempts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise OSError(self.error, "failing on purpose")
        return super().accept()


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.loop = Loop()
        self.path = str(tmp_path / "listen.sock")
        self.listener = FailingListener(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.admitted: list[socket.socket] = []
        self.clients: list[socket.socket] = []

    def acceptor(self, **options: Any) -> Acceptor:
        options.setdefault("batch", 4)
        return Acceptor(self.loop, self.listener, self.admitted.append,
                        what="test connections", **options)

    def connect(self, count: int = 1) -> None:
        for _ in range(count):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(self.path)  # completes in the backlog
            self.clients.append(client)

    def run_until(self, predicate: Callable[[], object]) -> None:
        run_loop_until(self.loop, predicate)

    def close(self) -> None:
        for sock in self.admitted + self.clients:
            sock.close()
        self.loop.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    made.close()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "superd"]


def test_a_wake_up_accepts_at_most_a_batch(setup: Setup) -> None:
    acceptor = setup.acceptor(batch=2)
    setup.connect(3)
    acceptor.on_readable()
    assert len(setup.admitted) == 2
    setup.run_until(lambda: len(setup.admitted) == 3)


def test_a_failure_pauses_then_accepting_resumes_with_two_log_lines(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="superd")
    acceptor = setup.acceptor()
    setup.listener.failures = 3
    setup.connect()
    acceptor.on_readable()
    assert not setup.loop.has_reader(acceptor.fd)  # paused, not spinning
    setup.run_until(lambda: setup.admitted)
    # Three failures 0.1, 0.2 and 0.4 s apart, the client, then nobody more.
    assert setup.listener.attempts == 5
    assert messages(caplog) == [
        "cannot accept test connections: failing on purpose; retrying",
        "accepting test connections again (3 failed tries)"]


def test_out_of_fds_asks_the_hook_and_goes_on(setup: Setup) -> None:
    calls: list[int] = []

    def refuse_one() -> bool:
        calls.append(1)
        return True

    acceptor = setup.acceptor(out_of_fds=refuse_one)
    setup.listener.failures, setup.listener.error = 1, errno.EMFILE
    setup.connect()
    acceptor.on_readable()
    assert calls == [1] and len(setup.admitted) == 1  # in the same wake-up
    assert setup.loop.has_reader(acceptor.fd)


def test_held_accepts_nobody_until_resumed_and_close_closes(setup: Setup) -> None:
    acceptor = setup.acceptor()
    setup.listener.failures = 1
    setup.connect()
    acceptor.on_readable()  # a pause with its retry armed
    acceptor.hold()
    assert not setup.loop.has_reader(acceptor.fd)
    acceptor.resume()
    setup.run_until(lambda: setup.admitted)
    acceptor.close()
    assert not setup.loop.has_reader(acceptor.fd) and setup.listener.fileno() == -1
