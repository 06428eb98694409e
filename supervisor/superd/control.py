"""The control socket: accepting clients, framing, per-connection buffers.

Every socket here is non-blocking.  A client's replies are queued in request
order and written as the socket accepts them; a client that stops reading is
cut off once its buffer passes OUTPUT_LIMIT, so no client can stall the loop.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from .loop import Loop
from .protocol import MAX_REQUEST, Decoder, FrameError, Kind, encode

log = logging.getLogger("superd")

OUTPUT_LIMIT = 8 << 20
READ_SIZE = 1 << 16
UCRED = struct.Struct("3i")

Handler = Callable[[dict[str, Any], "Reply"], None]


class Reply:
    """The answer to one request; may be given later than the request."""

    def __init__(self, connection: Connection, request_id: Any) -> None:
        self.connection = connection
        self.request_id = request_id
        self.message: dict[str, Any] | None = None

    def ok(self, result: Any) -> None:
        self._give({"id": self.request_id, "ok": True, "result": result})

    def error(self, code: str, message: str) -> None:
        self._give({"id": self.request_id, "ok": False,
                    "error": {"code": code, "message": message}})

    def _give(self, message: dict[str, Any]) -> None:
        if self.message is None:
            self.message = message
            self.connection.flush_replies()


class Connection:
    def __init__(self, server: ControlServer, sock: socket.socket, allowed: bool) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.allowed = allowed
        self.decoder = Decoder(MAX_REQUEST)
        self._output = bytearray()
        self.replies: deque[Reply] = deque()
        self._closing = False  # close once the output is written
        self.closed = False
        self._on_close: list[Callable[[], None]] = []
        server.loop.add_reader(self.fd, self.on_readable)

    # -- what others may ask and tell a connection -------------------------
    @property
    def pending_output(self) -> int:
        """Bytes queued for the client and not yet taken by the socket."""
        return len(self._output)

    @property
    def finishing(self) -> bool:
        """Closed, or closing once its output is written: send it nothing new."""
        return self.closed or self._closing

    def when_closed(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close_after_flush(self) -> None:
        """Read no more; close once what is queued has been written."""
        self._closing = True
        self.server.loop.remove_reader(self.fd)
        self.write_output()

    def move_to(self, server: ControlServer) -> None:
        """Belong to another server (the control socket moved on reload)."""
        self.server = server

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            messages = self.decoder.feed(data)
        except FrameError as exc:
            self.reject_frame(str(exc))
            return
        for kind, message in messages:
            if self._closing:
                return
            if kind is not Kind.REQUEST:
                self.reject_frame(f"expected a request, got kind {int(kind)}")
                return
            self.handle_request(message)

    def reject_frame(self, reason: str) -> None:
        self.replies.clear()
        reply = Reply(self, None)
        self.replies.append(reply)
        reply.error("bad_frame", reason)
        self.close_after_flush()

    def handle_request(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        reply = Reply(self, request_id if _is_json_scalar(request_id) else None)
        self.replies.append(reply)
        cmd, args = message.get("cmd"), message.get("args", {})
        if not self.allowed:
            reply.error("permission_denied", "this user may not send commands to superd")
        elif not isinstance(request_id, int) or isinstance(request_id, bool):
            reply.error("bad_request", "request id must be an integer")
        elif not isinstance(cmd, str) or not isinstance(args, dict):
            reply.error("bad_request", "a request needs a string 'cmd' and an object 'args'")
        else:
            self.server.dispatch(cmd, args, reply)

    def flush_replies(self) -> None:
        """Move answered replies, in request order, into the output buffer."""
        while self.replies and self.replies[0].message is not None:
            message = self.replies.popleft().message
            assert message is not None
            self.send(Kind.REPLY, message)

    def send(self, kind: Kind, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self.send_frame(encode(kind, message))

    def send_frame(self, frame: bytes, limit: int = OUTPUT_LIMIT) -> None:
        """Queue an encoded frame; cut the client off once `limit` bytes wait."""
        if self.closed:
            return
        self._output += frame
        if len(self._output) > limit:
            log.warning("control client on fd %d is not reading; disconnecting", self.fd)
            self.close()
            return
        self.write_output()

    def write_output(self) -> None:
        if self.closed:
            return
        if self._output:
            try:
                sent = self.sock.send(self._output)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            del self._output[:sent]
        loop = self.server.loop
        if self._output:
            if not loop.has_writer(self.fd):
                loop.add_writer(self.fd, self.write_output)
            return
        loop.remove_writer(self.fd)
        if self._closing:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.loop.remove_reader(self.fd)
        self.server.loop.remove_writer(self.fd)
        self.server.connections.discard(self)
        self.sock.close()
        for callback in self._on_close:
            callback()


class ControlServer:
    def __init__(self, loop: Loop, sock: socket.socket, path: str,
                 group: str | None, dispatch: Callable[[str, dict[str, Any], Reply], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.path = path
        self.group_id: int | None = None
        self.set_group(group)
        self.dispatch = dispatch
        self.connections: set[Connection] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self.on_accept)

    def on_accept(self) -> None:
        for _ in range(64):  # bounded, so a connect storm cannot starve the loop
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            client.setblocking(False)
            self.connections.add(Connection(self, client, self.peer_allowed(client)))

    def peer_allowed(self, client: socket.socket) -> bool:
        creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        _, uid, gid = UCRED.unpack(creds)
        if uid in (0, os.geteuid()):
            return True
        return self.group_id is not None and self.group_id in _groups_of(uid, gid)

    def take_over(self, old: ControlServer) -> None:
        """Adopt the clients of a server whose socket is being replaced (reload)."""
        for connection in old.release_connections():
            connection.move_to(self)
            self.connections.add(connection)
        old.close()

    def release_connections(self) -> set[Connection]:
        """Give up every connection (to the server that replaces this one)."""
        connections, self.connections = self.connections, set()
        return connections

    def set_group(self, group: str | None) -> None:
        """Which group, besides root and the daemon's user, may send commands."""
        self.group_id = grp.getgrnam(group).gr_gid if group else None

    def close(self) -> None:
        for connection in list(self.connections):
            connection.write_output()
            connection.close()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _groups_of(uid: int, gid: int) -> set[int]:
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {gid}
    return {gid, *os.getgrouplist(name, gid)}


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, str, float))
