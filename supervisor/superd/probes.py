"""The three healthcheck probes, each one try, run from the loop without
ever blocking it.

`tcp` connects to 127.0.0.1:PORT; `http` connects, sends a GET and reads
only the status line; `exec` runs a command (as the worker would be run) and
wants exit 0.  A probe reports once, through `done`: True (healthy), False
(not), or None when superd itself could not probe (no descriptors, no
processes): that is not the worker's failure and is not counted.  The caller
owns the deadline: it cancels a probe that overruns.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
from collections.abc import Callable

from .exits import describe_wait_status
from .loop import Loop
from .worker import RESOURCE_ERRNOS

# (verdict, what the probe found): True healthy, False not, None not probed.
Done = Callable[["bool | None", str], None]
# Starts an exec probe: (pid, read end of its stdout+stderr).
SpawnProbe = Callable[[], "tuple[int, int]"]
# Tells the reaper to hand this pid's wait status to the callback.
WatchPid = Callable[[int, Callable[[int], None]], None]

STATUS_LINE_MAX = 4096  # an HTTP status line longer than this is a failure
OUTPUT_KEPT = 512  # bytes of an exec probe's output kept for its message
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: |\r\n)")
URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost)(?::([0-9]{1,5}))?(/[^\s#]*)?")


def split_url(url: str) -> tuple[str, int, str, str]:
    """(address to connect to, port, request target, Host header) of an
    http:// URL; ValueError if a probe cannot fetch it.  The host must be an
    IP address or localhost: a probe never waits for a name lookup."""
    match = URL.fullmatch(url)
    if match is None:
        raise ValueError("expected http://ADDRESS[:PORT]/PATH with an IP address or "
                         f"localhost (no https, no host names), got {url!r}")
    host, port_text, target = match[1], match[2], match[3] or "/"
    address = "127.0.0.1" if host == "localhost" else host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        socket.inet_pton(family, address)
    except OSError:
        raise ValueError(f"not an IP address: {host}") from None
    port = int(port_text) if port_text else 80
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range 1..65535: {port}")
    return address, port, target, host if port_text is None else f"{host}:{port}"


def http_request(target: str, host_header: str) -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
            "User-Agent: superd-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            ).encode()


def http_verdict(head: bytes) -> tuple[bool, str] | None:
    """What a response starting with head says, or None while the status line
    is not complete yet."""
    match = STATUS_LINE.match(head)
    if match is not None:
        status = int(match[1])
        return 200 <= status < 400, f"HTTP {status}"
    if b"\n" in head or len(head) >= STATUS_LINE_MAX or b"HTTP/1."[:len(head)] != head[:7]:
        return False, "not an HTTP/1.x status line"
    return None


def cannot_probe(exc: OSError) -> tuple[bool | None, str]:
    """A shortage of superd's own is no verdict; any other error is a failure."""
    verdict = None if exc.errno in RESOURCE_ERRNOS else False
    return verdict, f"cannot probe: {exc.strerror or exc}"


class TcpCheck:
    """Healthy when a connection to the address succeeds."""

    def __init__(self, loop: Loop, address: str, port: int, done: Done) -> None:
        self.loop = loop
        self.address = (address, port)
        self.done = done
        self.sock: socket.socket | None = None
        self.sent = 0  # of the request, for HttpCheck

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.done(*cannot_probe(exc))
            return
        sock.setblocking(False)
        self.sock = sock
        code = sock.connect_ex(self.address)
        if code in (0, errno.EINPROGRESS):
            self.loop.add_writer(sock.fileno(), self._writable)
        else:
            self._finish(False, os.strerror(code).lower())

    def _writable(self) -> None:
        sock = self.sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            self._finish(False, os.strerror(code).lower())
            return
        self.connected(sock)

    def connected(self, sock: socket.socket) -> None:
        self._finish(True, "connected")

    def _finish(self, verdict: bool | None, message: str) -> None:
        self.cancel()
        self.done(verdict, message)

    def cancel(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            self.loop.remove_writer(sock.fileno())
            self.loop.remove_reader(sock.fileno())
            sock.close()


class HttpCheck(TcpCheck):
    """Healthy when a GET gets a 2xx or 3xx status; only the status line is read."""

    def __init__(self, loop: Loop, url: str, done: Done) -> None:
        address, port, target, host_header = split_url(url)
        super().__init__(loop, address, port, done)
        self.request = http_request(target, host_header)
        self.head = b""

    def connected(self, sock: socket.socket) -> None:
        try:
            self.sent += sock.send(self.request[self.sent:])
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(False, exc.strerror or str(exc))
            return
        if self.sent == len(self.request):
            self.loop.remove_writer(sock.fileno())
            self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(STATUS_LINE_MAX - len(self.head))
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(False, exc.strerror or str(exc))
            return
        self.head += data
        verdict = http_verdict(self.head)
        if verdict is not None:
            self._finish(*verdict)
        elif not data:
            self._finish(False, "connection closed before a status line")


class ExecCheck:
    """Healthy when the command exits 0; its process group is killed when
    cancelled and swept when it ends, and superd's reaper collects it."""

    def __init__(self, loop: Loop, spawn_probe: SpawnProbe, watch: WatchPid,
                 done: Done) -> None:
        self.loop = loop
        self.spawn_probe = spawn_probe
        self.watch = watch
        self.done = done
        self.pid: int | None = None
        self.output_fd: int | None = None
        self.output = b""

    def start(self) -> None:
        try:
            self.pid, self.output_fd = self.spawn_probe()
        except OSError as exc:
            self.done(*cannot_probe(exc))
            return
        os.set_blocking(self.output_fd, False)
        self.loop.add_reader(self.output_fd, self._read_output)
        self.watch(self.pid, self._exited)

    def _read_output(self) -> None:
        fd = self.output_fd
        assert fd is not None
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_output()
            return
        self.output = (self.output + data)[:OUTPUT_KEPT]  # the rest is read and dropped

    def _exited(self, wait_status: int) -> None:
        pid, self.pid = self.pid, None
        if pid is None:
            return  # cancelled: killed, and now reaped
        _kill_group(pid)  # what the probe left running goes with it
        if self.output_fd is not None:
            self._read_output()
        self._close_output()
        words = describe_wait_status(wait_status)
        first_line = self.output.decode(errors="replace").strip().split("\n")[0][:200]
        verdict = os.waitstatus_to_exitcode(wait_status) == 0
        self.done(verdict, f"{words}: {first_line}" if first_line else words)

    def cancel(self) -> None:
        """Kill the probe's group; it is reaped later, quietly."""
        if self.pid is not None:
            _kill_group(self.pid)
        self.pid = None
        self._close_output()

    @property
    def running_pid(self) -> int | None:
        return self.pid

    def _close_output(self) -> None:
        fd, self.output_fd = self.output_fd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        try:  # between fork and the child's setsid() there is no group yet
            os.kill(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
