"""GET /metrics over HTTP at `daemon.metrics` (tcp://HOST:PORT), in the loop.

A responder for scrapers, not a web server: one request per connection,
always `Connection: close`.  `GET /metrics` (or `HEAD`; a query string is
ignored) is answered 200 with the text of metrics.py; another path 404,
another method 405, a request that is not HTTP/1.x 400, a request head over
MAX_HEAD bytes 431.  Everything is non-blocking and bounded: at most
MAX_CONNECTIONS clients at once (one more is told 503 and closed at once), a
request head within HEAD_TIMEOUT (a client that sends it slowly is closed),
the answer written as the socket takes it within WRITE_TIMEOUT.  After the
answer superd shuts its side and reads what the client still sends, for at
most LINGER seconds and MAX_DISCARD bytes, before it closes: a close with
unread input would send a reset, which can destroy the answer on its way.

Scrapes that come within BODY_REUSE seconds of each other while one is
being answered share one text (as they share one reading of /proc), so
sixteen scrapers at once cost one rendering and one copy of it, not sixteen.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable

from .accepting import Acceptor
from .listen import parse_listen
from .loop import Loop, Timer
from .metrics import CONTENT_TYPE

log = logging.getLogger("superd")

MAX_CONNECTIONS = 16
MAX_HEAD = 8192  # bytes of request line and headers
HEAD_TIMEOUT = 5.0  # seconds from accept to the end of the request head
WRITE_TIMEOUT = 30.0  # seconds for the client to take the answer
LINGER = 2.0  # seconds to wait for the client's close after the answer
MAX_DISCARD = 1 << 16  # bytes read and dropped after the answer
READ_SIZE = 4096
BACKLOG = 64
BODY_REUSE = 0.5  # seconds a rendered text answers other scrapes (resources.FRESH_FOR)
ACCEPT_BATCH = 16  # clients accepted per wake-up of the listening socket
PATH = "/metrics"

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}
REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]")
HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:.*")
HEAD_END = re.compile(rb"\r?\n\r?\n")

Render = Callable[[], str]


class MetricsError(Exception):
    """The address cannot be listened on; the message is one line for users."""


def bind_metrics(address: str) -> socket.socket:
    """A non-blocking listening socket on `tcp://HOST:PORT`."""
    family, where = parse_listen(address)
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        # A restarted superd binds again at once, past the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise MetricsError(f"cannot serve metrics on {address}: "
                           f"{exc.strerror or exc}") from None
    return sock


# -- the request and its answer (pure) ------------------------------------------
def answer_status(head: bytes) -> tuple[int, bool]:
    """The status for a request head (request line and headers, without the
    blank line), and whether the answer has no body (HEAD)."""
    lines = re.split(rb"\r?\n", head)
    request = REQUEST_LINE.fullmatch(lines[0])
    if request is None or not all(HEADER_LINE.fullmatch(line) for line in lines[1:]):
        return 400, False
    method, target = request[1], request[2]
    if method not in (b"GET", b"HEAD"):
        return 405, False
    path = target.partition(b"?")[0]
    return (200 if path == PATH.encode() else 404), method == b"HEAD"


def response_head(status: int, length: int) -> bytes:
    """The status line and headers of an answer with a body of `length` bytes."""
    content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    allow = "Allow: GET, HEAD\r\n" if status == 405 else ""
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{allow}Connection: close\r\n\r\n").encode()


def response(status: int, body: bytes, head_only: bool = False) -> bytes:
    """The whole HTTP/1.1 response: status line, headers, then the body."""
    head = response_head(status, len(body))
    return head if head_only else head + body


def error_body(status: int) -> bytes:
    return f"{status} {REASONS[status]}: superd serves GET {PATH} here\n".encode()


# -- one client -------------------------------------------------------------------
class HttpConnection:
    """Reads one request head, writes one answer, lingers, closes."""

    def __init__(self, server: MetricsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = server.loop
        self.head = bytearray()
        self.output: list[memoryview] = []  # what is left to send, in order
        self.discarded = 0
        self.closed = False
        self.timer: Timer | None = None
        self._arm(HEAD_TIMEOUT, self._head_overdue)
        self.loop.add_reader(self.fd, self._guarded(self._read_head))

    # Every entry point from the loop: a fault costs this client, nobody else.
    def _guarded(self, step: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                step()
            except Exception:
                log.exception("metrics connection on fd %d failed; closing it", self.fd)
                self.close()

        guarded.__qualname__ = f"HttpConnection.{step.__name__}"
        return guarded

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, self._guarded(callback))

    def _read_head(self) -> None:
        data = self._receive(MAX_HEAD + 4 - len(self.head))
        if data is None:
            return
        if not data:
            self.close()  # gone before it asked anything: nothing to answer
            return
        searched = max(0, len(self.head) - 3)  # a head end may straddle two reads
        self.head += data
        end = HEAD_END.search(self.head, searched)
        if end is not None:
            self._answer_request(bytes(self.head[:end.start()]))
        elif len(self.head) > MAX_HEAD:
            self._answer(431, error_body(431))

    def _answer_request(self, head: bytes) -> None:
        status, head_only = answer_status(head)
        body = self.server.body() if status == 200 else error_body(status)
        self._answer(status, body, head_only)

    def _head_overdue(self) -> None:
        log.info("metrics client on fd %d sent no whole request within %g s; closing it",
                 self.fd, HEAD_TIMEOUT)
        self._answer(408, error_body(408))

    def _answer(self, status: int, body: bytes, head_only: bool = False) -> None:
        self.loop.remove_reader(self.fd)
        # Two parts, so that the body is the one the server shares, not a copy.
        self.output = [memoryview(response_head(status, len(body)))]
        if not head_only:
            self.output.append(memoryview(body))
        self._arm(WRITE_TIMEOUT, self._write_overdue)
        self._write()

    def _write(self) -> None:
        while self.output:
            try:
                sent = self.sock.send(self.output[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            self.output[0] = self.output[0][sent:]
            if not self.output[0]:
                self.output.pop(0)
        if self.output:
            if not self.loop.has_writer(self.fd):
                self.loop.add_writer(self.fd, self._guarded(self._write))
            return
        self.loop.remove_writer(self.fd)
        self._linger()

    def _write_overdue(self) -> None:
        log.info("metrics client on fd %d did not read its answer within %g s; closing it",
                 self.fd, WRITE_TIMEOUT)
        self.close()

    def _linger(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._arm(LINGER, self.close)
        self.loop.add_reader(self.fd, self._guarded(self._discard))

    def _discard(self) -> None:
        data = self._receive(READ_SIZE)
        if data is None:
            return
        self.discarded += len(data)
        if not data or self.discarded > MAX_DISCARD:
            self.close()

    def _receive(self, size: int) -> bytes | None:
        """What the client sent (b"" at its end or on an error); None: nothing yet."""
        try:
            return self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        if self.timer is not None:
            self.timer.cancel()
        self.output = []
        self.sock.close()
        self.server.forget(self)


# -- the listening socket -------------------------------------------------------------
class MetricsServer:
    def __init__(self, loop: Loop, sock: socket.socket, address: str, render: Render) -> None:
        self.loop = loop
        self.sock = sock
        self.address = address
        self.render = render
        self.connections: set[HttpConnection] = set()
        self._body: tuple[float, bytes] | None = None  # the last text, and when it was made
        self.acceptor = Acceptor(loop, sock, self._admit, what="metrics connections",
                                 batch=ACCEPT_BATCH)

    def fileno(self) -> int:
        return self.sock.fileno()

    def body(self) -> bytes:
        """The text to answer a scrape with: made now, or shared with another
        scrape that is still being answered and came at most BODY_REUSE ago."""
        now = time.monotonic()
        if self._body is None or now - self._body[0] >= BODY_REUSE:
            self._body = (now, self.render().encode())
        return self._body[1]

    def forget(self, connection: HttpConnection) -> None:
        """A connection is closed; with the last one goes the shared text."""
        self.connections.discard(connection)
        if not self.connections:
            self._body = None

    def _admit(self, client: socket.socket) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            refuse(client)
            return
        try:
            client.setblocking(False)
            connection = HttpConnection(self, client)
        except Exception:
            log.exception("cannot set up a metrics connection")
            client.close()
            return
        self.connections.add(connection)

    def close_connections(self) -> None:
        for connection in list(self.connections):
            connection.close()

    def close(self) -> None:
        """Close every client and the listening socket."""
        self.close_connections()
        self.acceptor.close()


def refuse(client: socket.socket) -> None:
    """One client too many: a 503 if its buffer takes it at once, then closed.
    What the client has sent by then is read first, so that the close sends
    no reset ahead of the answer."""
    try:
        client.setblocking(False)
        client.send(response(503, b"superd serves at most %d metrics connections at once\n"
                             % MAX_CONNECTIONS))
        client.recv(MAX_HEAD)
    except OSError:
        pass
    client.close()


# -- across reloads and re-execs ----------------------------------------------------
class Rebinding:
    """A reload's new address, its socket bound but not yet served (None: serve none)."""

    def __init__(self, address: str | None, sock: socket.socket | None) -> None:
        self.address = address
        self.sock = sock

    def discard(self) -> None:
        """The reload failed after all: give the new socket up."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class MetricsEndpoint:
    """The responder at `daemon.metrics`, whichever address that is now."""

    def __init__(self, loop: Loop, render: Render) -> None:
        self.loop = loop
        self.render = render
        self.server: MetricsServer | None = None

    @property
    def address(self) -> str | None:
        return None if self.server is None else self.server.address

    def open(self, address: str | None) -> None:
        """At start-up: serve on address (MetricsError if it cannot be bound)."""
        if address is not None:
            self._serve(address, bind_metrics(address))

    def adopt(self, saved: dict[str, object] | None, address: str | None) -> None:
        """After a re-exec: go on with the socket the image before served on
        (as the state names it; None in a state from before metrics), else bind.
        A failure is logged, not raised: the workers matter more."""
        sock = None if saved is None else _adopted(saved, address)
        if address is None:
            return
        try:
            self._serve(address, sock if sock is not None else bind_metrics(address))
        except MetricsError as exc:
            log.error("%s; serving no metrics until a reload", exc)

    def prepare(self, address: str | None) -> Rebinding | None:
        """For a reload: the new address bound (MetricsError if it cannot be),
        not yet served; None when the address is the same."""
        if address == self.address:
            return None
        return Rebinding(address, None if address is None else bind_metrics(address))

    def commit(self, rebinding: Rebinding | None) -> None:
        """Serve on the prepared address from now on; close the old one."""
        if rebinding is None:
            return
        self.close()
        if rebinding.address is not None and rebinding.sock is not None:
            self._serve(rebinding.address, rebinding.sock)

    def _serve(self, address: str, sock: socket.socket) -> None:
        self.server = MetricsServer(self.loop, sock, address, self.render)
        host, port = sock.getsockname()[:2]
        log.info("serving metrics at http://%s:%d%s", f"[{host}]" if ":" in host else host,
                 port, PATH)

    def handover(self) -> dict[str, object] | None:
        """What a new image needs to go on serving (handover.py keeps the fd open)."""
        server = self.server
        return None if server is None else {"fd": server.fileno(), "address": server.address}

    def close_connections(self) -> None:
        """Before a re-exec: the clients go, the listening socket stays."""
        if self.server is not None:
            self.server.close_connections()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _adopted(saved: dict[str, object], address: str | None) -> socket.socket | None:
    """The socket the image before served on, if it is still the address wanted."""
    try:
        sock = socket.socket(fileno=int(str(saved["fd"])))
    except (OSError, ValueError) as exc:
        log.error("cannot take the metrics socket over (%s); binding it again", exc)
        return None
    if saved.get("address") == address:
        return sock
    sock.close()
    return None
