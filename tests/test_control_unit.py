"""The control server in-process: a real Loop and a real socket in a tmp folder,
with dispatch functions that misbehave on purpose (raise, answer late, answer
with too much), so each fault boundary and bound is seen on its own."""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from superd import control
from superd.control import ControlServer, Reply
from superd.loop import Loop
from superd.protocol import HEADER, MAX_REPLY, Decoder, Kind, encode
from support import request_frame, run_loop_until

Dispatch = Callable[[str, dict[str, Any], Reply], None]


def answer_ping(cmd: str, args: dict[str, Any], reply: Reply) -> None:
    reply.ok({"cmd": cmd, **args})


class Peer:
    """A test client: blocking connect, non-blocking reads."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)  # completes in the backlog; the loop accepts later
        self.sock.setblocking(False)
        self.decoder = Decoder(MAX_REPLY)
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self.next_id = 1

    def send(self, cmd: str, args: dict[str, Any] | None = None) -> int:
        request_id = self.next_id
        self.next_id += 1
        self.sock.sendall(request_frame(request_id, cmd, args))
        return request_id

    def poll(self) -> list[dict[str, Any]]:
        """Take what has arrived; note a close."""
        while not self.closed:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            self.messages.extend(message for _, message in self.decoder.feed(data))
        return self.messages

    def has(self, count: int) -> bool:
        return len(self.poll()) >= count

    def close(self) -> None:
        self.sock.close()


class Harness:
    def __init__(self, tmp_path: Path, dispatch: Dispatch, **options: Any) -> None:
        self.loop = Loop()
        self.path = str(tmp_path / "control.sock")
        listener = options.pop("listener", None) or socket.socket(socket.AF_UNIX,
                                                                  socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        options.setdefault("max_connections", 256)
        self.server = ControlServer(self.loop, listener, self.path, None, dispatch, **options)
        self.peers: list[Peer] = []

    def peer(self) -> Peer:
        peer = Peer(self.path)
        self.peers.append(peer)
        return peer

    def run_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Run the loop until predicate holds; fail at the deadline."""
        run_loop_until(self.loop, predicate, timeout)

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, seconds + 5)

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(dispatch: Dispatch = answer_ping, **options: Any) -> Harness:
        made.append(Harness(tmp_path, dispatch, **options))
        return made[-1]

    yield make
    for one in made:
        one.close()


def superd_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "superd"]


# -- fault boundaries ---------------------------------------------------------

def raising(cmd: str, args: dict[str, Any], reply: Reply) -> None:
    if cmd == "boom":
        raise RuntimeError("broken\nover two lines")
    answer_ping(cmd, args, reply)


def test_a_failing_command_is_an_internal_error_for_that_request_only(
        harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture) -> None:
    h = harness(raising)
    peer, bystander = h.peer(), h.peer()
    peer.send("boom")
    peer.send("ping")
    bystander.send("ping")
    h.run_until(lambda: peer.has(2) and bystander.has(1))
    failed, fine = peer.messages
    assert failed == {"id": 1, "ok": False,
                      "error": {"code": "internal",
                                "message": "RuntimeError: broken over two lines"}}
    assert fine["id"] == 2 and fine["ok"] is True
    assert bystander.messages[0]["ok"] is True and not peer.closed
    logged = [r for r in superd_records(caplog) if r.exc_info]
    assert len(logged) == 1 and "boom" in logged[0].getMessage()


def test_a_late_answer_that_cannot_be_encoded_is_an_internal_error(
        harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture) -> None:
    def later(cmd: str, args: dict[str, Any], reply: Reply) -> None:
        # A set is not JSON: the failure happens in a timer, far from dispatch.
        h.loop.call_later(0, lambda: reply.ok({"a set": {1, 2}}))

    h = harness(later)
    peer = h.peer()
    peer.send("status")
    h.run_until(lambda: peer.has(1))
    assert peer.messages[0]["error"]["code"] == "internal"
    assert "TypeError" in peer.messages[0]["error"]["message"]
    peer.send("status")
    h.run_until(lambda: peer.has(2))
    assert not peer.closed


class BrokenDecoder(Decoder):
    def push(self, data: bytes) -> None:
        raise ValueError("decoder bug")


class BrokenSocket:
    """A connection's socket whose send has a bug; everything else is real."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes) -> int:
        raise KeyError("send bug")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def only_connection(h: Harness) -> control.Connection:
    h.run_until(lambda: len(h.server.connections) == 1)
    (connection,) = h.server.connections
    return connection


@pytest.mark.parametrize("fault", ["read", "write"])
def test_a_failing_connection_callback_closes_that_connection_only(
        harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture, fault: str) -> None:
    h = harness()
    victim = h.peer()
    connection = only_connection(h)
    if fault == "read":
        connection.decoder = BrokenDecoder(1 << 20)
    else:
        connection.sock = BrokenSocket(connection.sock)  # type: ignore[assignment]
    victim.send("ping")
    h.run_until(lambda: victim.poll() is not None and victim.closed)
    bystander = h.peer()
    bystander.send("ping")
    h.run_until(lambda: bystander.has(1))
    assert bystander.messages[0]["ok"] is True
    logged = [r for r in superd_records(caplog) if r.exc_info]
    assert len(logged) == 1 and "closing" in logged[0].getMessage()


# -- sizes ----------------------------------------------------------------------

def test_a_big_reply_arrives_and_one_over_the_limit_is_too_large(
        harness: Callable[..., Harness]) -> None:
    def sized(cmd: str, args: dict[str, Any], reply: Reply) -> None:
        reply.ok("x" * args["size"])

    h = harness(sized)
    peer = h.peer()
    peer.send("big", {"size": 2 << 20})
    peer.send("huge", {"size": MAX_REPLY + 1})
    peer.send("small", {"size": 1})
    h.run_until(lambda: peer.has(3))
    big, huge, small = peer.messages
    assert big["ok"] is True and len(big["result"]) == 2 << 20
    assert huge["id"] == 2 and huge["error"]["code"] == "too_large"
    assert small == {"id": 3, "ok": True, "result": "x"} and not peer.closed


# -- accept failures --------------------------------------------------------------

class FailingListener(socket.socket):
    """A listening socket whose accept() fails while `failing` is set."""

    failing = True
    attempts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failing:
            self.attempts += 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().accept()


def test_accept_failing_backs_off_instead_of_spinning(
        harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="superd")
    listener = FailingListener(socket.AF_UNIX, socket.SOCK_STREAM)
    h = harness(listener=listener)
    peer = h.peer()  # waits in the backlog: the listener stays readable
    h.run_for(1.0)
    # Retries after 0.1, 0.2, 0.4, 0.8 s: a handful, not a spin.
    assert 1 <= listener.attempts <= 6
    about_accept = [r for r in superd_records(caplog) if "accept" in r.getMessage()]
    assert len(about_accept) == 1
    listener.failing = False
    peer.send("ping")
    h.run_until(lambda: peer.has(1), timeout=3.0)
    assert peer.messages[0]["ok"] is True
    about_accept = [r for r in superd_records(caplog) if "accept" in r.getMessage()]
    assert len(about_accept) == 2  # the failure, then the recovery


# -- bounded clients ------------------------------------------------------------------

def test_a_client_that_does_not_read_is_not_read_from(harness: Callable[..., Harness]) -> None:
    handled: list[int] = []

    def bulky(cmd: str, args: dict[str, Any], reply: Reply) -> None:
        handled.append(args["n"])
        reply.ok("y" * 10_000)

    h = harness(bulky)
    hog = h.peer()
    frames = b"".join(encode(Kind.REQUEST, {"id": n, "cmd": "status", "args": {"n": n}})
                      for n in range(1, 2001))
    sent = send_what_fits(hog.sock, frames)
    connection = only_connection(h)
    h.run_until(lambda: connection.pending_output >= control.OUTPUT_PAUSE
                and not h.loop.has_reader(connection.fd))
    h.run_for(0.2)
    paused_at = len(handled)
    # The output buffer bounds the work: it holds few 10 kB replies.
    assert paused_at < control.OUTPUT_PAUSE // 10_000 + 50
    assert connection.pending_output < control.OUTPUT_PAUSE + 20_000
    # Reading the replies lets it go on, in order, to the last one.
    def read_and_send_more() -> bool:
        nonlocal sent
        sent += send_what_fits(hog.sock, frames[sent:])
        return hog.has(2000)

    h.run_until(read_and_send_more, timeout=20.0)
    assert [m["id"] for m in hog.messages] == list(range(1, 2001))
    assert not hog.closed


def send_what_fits(sock: socket.socket, data: bytes) -> int:
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            break
    return sent


def test_a_pipelining_client_lets_others_have_their_turn(
        harness: Callable[..., Harness]) -> None:
    order: list[str] = []

    def record(cmd: str, args: dict[str, Any], reply: Reply) -> None:
        order.append(cmd)
        reply.ok(None)

    h = harness(record)
    hog, other = h.peer(), h.peer()
    hog.sock.sendall(b"".join(encode(Kind.REQUEST, {"id": n, "cmd": "status", "args": {}})
                              for n in range(1, 1001)))
    h.run_until(lambda: "status" in order)
    handled_before = len(order)
    other.send("ping")
    h.run_until(lambda: "ping" in order)
    # At most one turn of the hog's comes between the ping and its answer.
    assert order.index("ping") - handled_before <= control.REQUESTS_PER_TURN
    assert len(order) < 1000
    h.run_until(lambda: hog.has(1000))


def test_a_partial_frame_is_closed_after_the_timeout(harness: Callable[..., Harness]) -> None:
    h = harness(partial_frame_timeout=0.3)
    idle, partial = h.peer(), h.peer()
    frame = encode(Kind.REQUEST, {"id": 1, "cmd": "ping", "args": {}})
    began = time.monotonic()
    partial.sock.sendall(frame[:5])
    h.run_for(0.2)
    partial.sock.sendall(frame[5:12])  # progress: the wait starts again
    h.run_until(lambda: partial.poll() is not None and partial.closed, timeout=3.0)
    assert time.monotonic() - began >= 0.45
    assert partial.messages[0]["id"] is None
    assert partial.messages[0]["error"]["code"] == "bad_frame"
    idle.send("ping")  # a client that sent nothing was never timed out
    h.run_until(lambda: idle.has(1))
    assert not idle.closed


def test_only_a_pending_partial_frame_arms_a_timer(harness: Callable[..., Harness]) -> None:
    h = harness(partial_frame_timeout=60)
    peer = h.peer()
    connection = only_connection(h)
    assert not connection.waiting_for_frame
    frame = encode(Kind.REQUEST, {"id": 1, "cmd": "ping", "args": {}})
    peer.sock.sendall(frame[:HEADER.size + 2])
    h.run_until(lambda: connection.waiting_for_frame)
    peer.sock.sendall(frame[HEADER.size + 2:])
    h.run_until(lambda: peer.has(1))
    assert not connection.waiting_for_frame


def test_connections_beyond_the_maximum_are_refused(harness: Callable[..., Harness]) -> None:
    h = harness(max_connections=2)
    first, second = h.peer(), h.peer()
    h.run_until(lambda: len(h.server.connections) == 2)
    third = h.peer()
    h.run_until(lambda: third.poll() is not None and third.closed)
    assert third.messages == [{"id": None, "ok": False, "error": {
        "code": "too_many_connections", "message": third.messages[0]["error"]["message"]}}]
    assert "2" in third.messages[0]["error"]["message"]
    first.close()
    h.run_until(lambda: len(h.server.connections) == 1)
    fourth = h.peer()
    fourth.send("ping")
    second.send("ping")
    h.run_until(lambda: fourth.has(1) and second.has(1))
    assert fourth.messages[0]["ok"] and second.messages[0]["ok"]
