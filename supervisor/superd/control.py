"""The control socket: accepting clients, framing, per-connection buffers.

Every socket here is non-blocking, and what one client does costs only that
client.  Its replies are queued in request order and written as the socket
takes them; while OUTPUT_PAUSE bytes (or MAX_UNANSWERED replies) wait, it is
not read from, so a client that does not read its replies holds at most one
bounded buffer.  It is served REQUESTS_PER_TURN requests at a time, then the
others get their turn.  A failing command costs that request (an `internal`
error reply); a failing read or write costs that connection.  Accepting backs
off when it fails, and a spare descriptor lets superd answer a client even
when it has run out of them.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

from .accepting import Acceptor
from .loop import Loop, Timer
from .protocol import MAX_REQUEST, Decoder, FrameError, Kind, TooLarge, encode, frame, to_json

log = logging.getLogger("superd")

OUTPUT_PAUSE = 256 << 10  # unread output at which a client is no longer read from
MAX_UNANSWERED = 64  # requests of one client waiting for their replies (start, stop...)
READ_SIZE = 1 << 16
REQUESTS_PER_TURN = 1  # a client's next request waits for the other clients' turns
PARTIAL_FRAME_TIMEOUT = 30.0
ACCEPT_BATCH = 64  # clients accepted per wake-up of the listening socket
UCRED = struct.Struct("3i")

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Dispatch: TypeAlias = Callable[[str, dict[str, Any], "Reply"], None]


def error_message(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def one_line(exc: BaseException) -> str:
    """`Type: text` on one line, for an `internal` error reply."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def encode_reply(message: dict[str, Any] | str, request_id: Any) -> bytes:
    """The reply's frame (from the message, or its JSON text); one that cannot
    be sent becomes an error reply."""
    try:
        return frame(Kind.REPLY, message if isinstance(message, str) else to_json(message))
    except TooLarge as exc:
        return encode(Kind.REPLY, error_message(
            request_id, "too_large", f"reply too large to send ({exc}); ask for less"))
    except Exception as exc:  # a result that is not JSON: a bug in superd
        log.exception("cannot encode the reply to request %r", request_id)
        return encode(Kind.REPLY, error_message(request_id, "internal", one_line(exc)))


def encode_event(event: dict[str, Any]) -> bytes | None:
    """The event's frame, or None (logged) when it cannot be sent."""
    try:
        return encode(Kind.EVENT, event)
    except TooLarge as exc:
        log.warning("dropped a %s event: %s", event.get("event"), exc)
    except Exception:
        log.exception("cannot encode a %s event", event.get("event"))
    return None


class Reply:
    """The answer to one request; may be given later than the request."""

    def __init__(self, connection: Connection, request_id: Any) -> None:
        self.connection = connection
        self.request_id = request_id
        self.frame: bytes | None = None  # the encoded answer, once given

    def ok(self, result: Any) -> None:
        self._give({"id": self.request_id, "ok": True, "result": result})

    def ok_json(self, result_json: str) -> None:
        """Answer with a result that is already JSON text."""
        self._give(f'{{"id":{to_json(self.request_id)},"ok":true,"result":{result_json}}}')

    def error(self, code: str, message: str) -> None:
        self._give(error_message(self.request_id, code, message))

    def _give(self, message: dict[str, Any] | str) -> None:
        if self.frame is None:
            self.frame = encode_reply(message, self.request_id)
            self.connection.flush_replies()


class OutputBuffer:
    """Bytes waiting for a socket; taking from the front never moves the rest."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0

    def __len__(self) -> int:
        return len(self._data) - self._start

    def append(self, frame: bytes) -> None:
        self._data += frame

    def send_to(self, sock: socket.socket) -> None:
        """Send what the socket takes now; OSError as send(2) raises it."""
        if not self._start:
            self._start = sock.send(self._data)
        else:
            with memoryview(self._data) as view:
                self._start += sock.send(view[self._start:])
        if self._start == len(self._data):
            self._data.clear()
            self._start = 0
        elif self._start > len(self._data) // 2:
            del self._data[:self._start]
            self._start = 0


class Connection:
    """One client: reads its requests in turns, writes its replies in order."""

    def __init__(self, server: ControlServer, sock: socket.socket, allowed: bool) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.allowed = allowed
        self.decoder = Decoder(MAX_REQUEST)
        self._output = OutputBuffer()
        self.replies: deque[Reply] = deque()
        self._closing = False  # close once the output is written
        self.closed = False
        self._on_close: list[Callable[[], None]] = []
        self._backlog = False  # the decoder may hold requests not handled yet
        self._turn: Timer | None = None
        self._partial_timer: Timer | None = None
        self._last_bytes = time.monotonic()
        self._reconcile()

    # -- what others may ask and tell a connection -------------------------
    @property
    def pending_output(self) -> int:
        """Bytes queued for the client and not yet taken by the socket."""
        return len(self._output)

    @property
    def finishing(self) -> bool:
        """Closed, or closing once its output is written: send it nothing new."""
        return self.closed or self._closing

    @property
    def waiting_for_frame(self) -> bool:
        """A partial frame is pending and its timeout is armed."""
        return self._partial_timer is not None

    def when_closed(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close_after_flush(self) -> None:
        """Read no more; close once what is queued has been written."""
        self._closing = True
        self.write_output()

    def move_to(self, server: ControlServer) -> None:
        """Belong to another server (the control socket moved on reload)."""
        self.server = server

    def flush_replies(self) -> None:
        """Move answered replies, in request order, into the output buffer."""
        try:
            while self.replies and self.replies[0].frame is not None:
                frame = self.replies.popleft().frame
                assert frame is not None
                self._queue(frame)
            self._write()
        except Exception:
            self._fail()

    def send(self, kind: int, message: dict[str, Any]) -> None:
        """Queue an event; one that cannot be encoded is dropped (and logged)."""
        frame = encode_event(message) if kind == Kind.EVENT \
            else encode_reply(message, message.get("id"))
        if frame is not None:
            self.send_frame(frame)

    def send_frame(self, frame: bytes, limit: int | None = None) -> None:
        """Queue an encoded event.  With `limit`, a client that still has more
        than `limit` bytes of earlier output unread is cut off instead."""
        if self.closed:
            return
        if limit is not None and len(self._output) > limit:
            log.warning("control client on fd %d is not reading its events; disconnecting",
                        self.fd)
            self.close()
            return
        try:
            self._queue(frame)
            self._write()
        except Exception:
            self._fail()

    def write_output(self) -> None:
        try:
            self._write()
        except Exception:
            self._fail()

    # -- the fault boundary of one connection -------------------------------
    # Every entry point (loop callbacks, timers, replies and events given from
    # elsewhere) ends in `except Exception: self._fail()`: a bug while serving
    # this client closes this client, nobody else.  (Plain try blocks, not a
    # context manager: events reach every subscriber through here.)
    def _fail(self) -> None:
        log.exception("control connection on fd %d failed; closing it", self.fd)
        self.close()

    # -- reading ------------------------------------------------------------
    def _reconcile(self) -> None:
        """Read, take a turn at the backlog, or wait: decided from the state alone."""
        if self.closed:
            return  # its fd number may already belong to another connection
        loop = self.server.loop
        held = self.finishing or self._held_back()
        reading = not held and not self._backlog
        if reading and not loop.has_reader(self.fd):
            self._last_bytes = time.monotonic()  # the client's wait starts now
            loop.add_reader(self.fd, self._on_readable)
        elif not reading:
            loop.remove_reader(self.fd)
        if self._backlog and not held:
            if self._turn is None:
                self._turn = loop.call_later(0, self._on_turn)
        elif self._turn is not None:
            self._turn.cancel()
            self._turn = None
        self._watch_partial_frame(reading and self.decoder.pending > 0)

    def _held_back(self) -> bool:
        """Too much waits for this client already: read nothing more for now."""
        return len(self._output) >= OUTPUT_PAUSE or len(self.replies) >= MAX_UNANSWERED

    def _on_readable(self) -> None:
        try:
            self._read()
        except Exception:
            self._fail()

    def _on_turn(self) -> None:
        self._turn = None
        try:
            self._take_turn()
        except Exception:
            self._fail()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._last_bytes = time.monotonic()
        self.decoder.push(data)
        self._take_turn()

    def _take_turn(self) -> None:
        """Handle up to REQUESTS_PER_TURN requests; the rest wait for the next pass."""
        for _ in range(REQUESTS_PER_TURN):
            if self.finishing or self._held_back():
                break
            try:
                message = self.decoder.next()
            except FrameError as exc:
                self.reject_frame(str(exc))
                return
            if message is None:
                break
            kind, body = message
            if kind != Kind.REQUEST:
                self.reject_frame(f"expected a request, got kind {kind}")
                return
            self.handle_request(body)
        if self.closed:
            return
        try:
            # Only another whole request waiting costs a turn of the loop;
            # the usual one request per read goes on reading at once.
            self._backlog = self.decoder.has_message()
        except FrameError as exc:
            self.reject_frame(str(exc))
            return
        self._reconcile()

    def _watch_partial_frame(self, pending: bool) -> None:
        if pending and self._partial_timer is None:
            deadline = self._last_bytes + self.server.partial_frame_timeout
            self._partial_timer = self.server.loop.call_at(deadline, self._on_partial_due)
        elif not pending and self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    def _on_partial_due(self) -> None:
        self._partial_timer = None
        try:
            self._close_stalled_frame()
        except Exception:
            self._fail()

    def _close_stalled_frame(self) -> None:
        timeout = self.server.partial_frame_timeout
        if time.monotonic() - self._last_bytes < timeout:
            self._reconcile()  # more came meanwhile: wait from the last bytes
            return
        log.info("control client on fd %d sent part of a frame and nothing more "
                 "for %g s; closing it", self.fd, timeout)
        self.reject_frame(f"incomplete frame: nothing more for {timeout:g} s")

    def reject_frame(self, reason: str) -> None:
        """One `bad_frame` reply in place of any still owed, then close."""
        self.replies.clear()
        self._closing = True
        reply = Reply(self, None)
        self.replies.append(reply)
        reply.error("bad_frame", reason)

    # -- one request ------------------------------------------------------------
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
            self._dispatch(cmd, args, reply)

    def _dispatch(self, cmd: str, args: dict[str, Any], reply: Reply) -> None:
        """The fault boundary of one request: a bug costs that request only."""
        try:
            self.server.dispatch(cmd, args, reply)
        except Exception as exc:
            log.exception("command %r failed", cmd[:100])
            reply.error("internal", one_line(exc))

    # -- writing ----------------------------------------------------------------
    def _queue(self, frame: bytes) -> None:
        if not self.closed:
            self._output.append(frame)

    def _write(self) -> None:
        if self.closed:
            return
        if self._output:
            try:
                self._output.send_to(self.sock)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.close()
                return
        loop = self.server.loop
        if self._output:
            if not loop.has_writer(self.fd):
                loop.add_writer(self.fd, self.write_output)
        elif self._closing:
            self.close()
            return
        elif loop.has_writer(self.fd):
            loop.remove_writer(self.fd)
        # Most writes (an event to a subscriber that keeps up) change nothing
        # about reading; only look again when something might have.
        if self._backlog or self._held_back() or not loop.has_reader(self.fd):
            self._reconcile()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.server.loop
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        for timer in (self._turn, self._partial_timer):
            if timer is not None:
                timer.cancel()
        self._turn = self._partial_timer = None
        self.server.connections.discard(self)
        self.sock.close()
        for callback in self._on_close:
            try:
                callback()
            except Exception:
                log.exception("a close callback of control connection %d failed", self.fd)


class ControlServer:
    def __init__(self, loop: Loop, sock: socket.socket, path: str, group: str | None,
                 dispatch: Dispatch, max_connections: int,
                 partial_frame_timeout: float = PARTIAL_FRAME_TIMEOUT) -> None:
        self.loop = loop
        self.sock = sock
        self.path = path
        self.group_id: int | None = None
        self.set_group(group)
        self.dispatch = dispatch
        self.max_connections = max_connections
        self.partial_frame_timeout = partial_frame_timeout
        self.connections: set[Connection] = set()
        self._spare_fd = _open_spare()
        self.acceptor = Acceptor(
            loop, sock, self._admit, what="control connections", batch=ACCEPT_BATCH,
            meanwhile="new clients wait or are refused until it works",
            out_of_fds=self._refuse_one_with_spare_fd)

    # -- accepting ------------------------------------------------------------
    def _admit(self, client: socket.socket) -> None:
        if len(self.connections) >= self.max_connections:
            refuse(client, f"superd serves at most {self.max_connections} control "
                   "connections at once; try again later")
            return
        try:
            client.setblocking(False)
            connection = Connection(self, client, self.peer_allowed(client))
        except Exception:
            log.exception("cannot set up a control connection")
            client.close()
            return
        self.connections.add(connection)

    def _refuse_one_with_spare_fd(self) -> bool:
        """Out of descriptors: free the spare one to accept one client and tell it
        so, rather than leave it waiting (and the listening socket readable).
        False when there was no spare or accept() failed again."""
        if self._spare_fd is None:
            return False
        os.close(self._spare_fd)
        try:
            client, _ = self.sock.accept()
        except OSError:
            client = None
        if client is not None:
            refuse(client, "superd is out of file descriptors; try again later")
        self._spare_fd = _open_spare()  # the descriptor just closed is free again
        return client is not None

    def peer_allowed(self, client: socket.socket) -> bool:
        creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        _, uid, gid = UCRED.unpack(creds)
        if uid in (0, os.geteuid()):
            return True
        return self.group_id is not None and self.group_id in _groups_of(uid, gid)

    # -- reload and close ---------------------------------------------------------
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

    def set_max_connections(self, limit: int) -> None:
        """Serve at most this many connections from now on; open ones stay open."""
        self.max_connections = limit

    def set_group(self, group: str | None) -> None:
        """Which group, besides root and the daemon's user, may send commands."""
        self.group_id = grp.getgrnam(group).gr_gid if group else None

    # -- a re-exec ------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def hold_accepting(self) -> None:
        """Accept nobody for now: connects wait in the kernel's backlog (for
        the next image, at a re-exec)."""
        self.acceptor.hold()

    def accept_again(self) -> None:
        self.acceptor.resume()

    def close_connections(self) -> None:
        """Write what each client's socket takes now, then close every one."""
        for connection in list(self.connections):
            connection.write_output()
            connection.close()

    def close(self) -> None:
        self.close_connections()
        self.acceptor.close()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def refuse(client: socket.socket, message: str) -> None:
    """Send a client its one `too_many_connections` reply and close it."""
    frame = encode(Kind.REPLY, error_message(None, "too_many_connections", message))
    try:
        client.setblocking(False)
        client.send(frame)  # a fresh socket's buffer takes one small frame
    except OSError:
        pass
    client.close()


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _groups_of(uid: int, gid: int) -> set[int]:
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {gid}
    return {gid, *os.getgrouplist(name, gid)}


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, str, float))
