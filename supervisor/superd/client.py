"""Blocking client for superd's control socket (wire format v1).

superctl imports this module on every run, so it keeps to what is cheap to
import: `_socket`, not `socket`, whose import builds four enums from the
constants of `_socket` (a blocking AF_UNIX stream needs nothing it adds);
`_collections`, not `collections`, whose import of some 3 ms brings the same
deque; and no typing at run time.
"""

from __future__ import annotations

import _socket

from superd.protocol import MAX_REPLY, Decoder, FrameError, Kind, encode

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Iterator
    from types import TracebackType
    from typing import Any
else:
    from _collections import deque  # the deque of collections, which has no stub

RECV_SIZE = 65536


class DaemonUnreachable(Exception):
    """No usable connection to superd; str() is a one-line reason."""


class CommandFailed(Exception):
    """superd answered a request with ok: false."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Client:
    """One connection to superd; requests may be pipelined with send()/wait()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = connect(path)
        self._decoder = Decoder(MAX_REPLY)
        self._next_id = 1
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: deque[dict[str, Any]] = deque()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, cmd: str, args: dict[str, Any]) -> object:
        """Send one command and block for its result."""
        return self.wait(self.send(cmd, args))

    def send(self, cmd: str, args: dict[str, Any]) -> int:
        """Send a request without waiting; return its id for wait()."""
        request_id = self._next_id
        self._next_id += 1
        frame = encode(Kind.REQUEST, {"id": request_id, "cmd": cmd, "args": args})
        try:
            self._sock.sendall(frame)
        except OSError:
            self._read_last_words()
            raise DaemonUnreachable("superd closed the connection") from None
        return request_id

    def _read_last_words(self) -> None:
        """A daemon that refused this connection said why before closing it;
        raise that, if it is there to read."""
        try:
            data = self._sock.recv(RECV_SIZE, _socket.MSG_DONTWAIT)
            messages = self._decoder.feed(data)
        except (OSError, FrameError):
            return
        for kind, message in messages:
            self._file(kind, message)

    def wait(self, request_id: int) -> object:
        """Block until the reply to request_id arrives; return its result."""
        while request_id not in self._replies:
            self._receive()
        return result_of(self._replies.pop(request_id))

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield pushed events forever (send `subscribe` first)."""
        while True:
            while self._events:
                yield self._events.popleft()
            self._receive()

    def _receive(self) -> None:
        try:
            data = self._sock.recv(RECV_SIZE)
        except OSError as exc:
            raise DaemonUnreachable(f"lost connection to superd: {reason(exc)}") from None
        if not data:
            raise DaemonUnreachable("superd closed the connection")
        try:
            messages = self._decoder.feed(data)
        except FrameError as exc:
            raise DaemonUnreachable(f"bad frame from {self.path}: {exc}") from None
        for kind, message in messages:
            self._file(kind, message)

    def _file(self, kind: int, message: dict[str, Any]) -> None:
        if kind == Kind.EVENT:
            self._events.append(message)
        elif kind == Kind.REPLY:
            request_id = message.get("id")
            if isinstance(request_id, int):
                self._replies[request_id] = message
            else:
                # A connection-level error (bad_frame, too_many_connections)
                # answers no single request: it fails whichever one is waited for.
                refused(message)
                result_of(message)


def connect(path: str) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise DaemonUnreachable(f"cannot reach superd at {path}: {reason(exc)}") from None
    return sock


def refused(reply: dict[str, Any]) -> None:
    """A daemon with no room for this connection: as unreachable as no daemon."""
    error = reply.get("error")
    if isinstance(error, dict) and error.get("code") == "too_many_connections":
        raise DaemonUnreachable(f"superd refused the connection: {error.get('message')}")


def result_of(reply: dict[str, Any]) -> object:
    if reply.get("ok") is True:
        return reply.get("result")
    error = reply.get("error")
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code", "error"))
    raise CommandFailed(code, str(error.get("message", f"request failed ({code})")))


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
