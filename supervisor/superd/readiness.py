"""Workers telling superd they are ready: sd_notify datagrams and TCP probes.

`ready: notify` follows systemd's NotifyAccess=all: a datagram counts when its
sender (the kernel's SCM_CREDENTIALS, never the payload) is the worker or any
process in the worker's process group.  `ready: {tcp: PORT}` is RUNNING once a
non-blocking connect to 127.0.0.1:PORT succeeds; failed connects are retried
on a short timer, never in a busy loop.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable

from .loop import Loop, Timer
from .states import Event, State
from .worker import Instance

log = logging.getLogger("superd")

MAX_DATAGRAM = 4096
MAX_FDS = 64
BATCH = 64  # datagrams per wake-up, so a flood cannot starve the loop
FLOOD_PAUSE = 0.01  # seconds the socket is left alone after a stranger wrote to it
STRANGERS_REPORT_EVERY = 1.0  # seconds: dropped datagrams are summed up, not logged each
STRANGER_PIDS_SHOWN = 5
UCRED = struct.Struct("iII")  # pid, uid, gid
TCP_RETRY = 0.05
STATUS_TEXT_MAX = 200

FindInstance = Callable[[int], "Instance | None"]


def parse_notify(payload: bytes) -> dict[str, str]:
    """`KEY=VALUE` lines -> dict; lines without `=` are ignored, as systemd does."""
    fields: dict[str, str] = {}
    for line in payload.decode(errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def close_passed_fds(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """Close every fd that came with a datagram; return the sender pid if known."""
    pid = None
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        elif kind == socket.SCM_CREDENTIALS and len(data) >= UCRED.size:
            pid = UCRED.unpack_from(data)[0]
    return pid


def notify_socket_path(control_socket: str) -> str:
    path = control_socket + ".notify"
    # sun_path holds 107 bytes; a deep folder falls back to an abstract name.
    if len(path.encode()) < 100:
        return path
    return f"@superd-notify-{os.getpid()}"


class NotifyServer:
    """The daemon's one datagram socket that `ready: notify` workers write to."""

    def __init__(self, loop: Loop, address: str, find: FindInstance,
                 bound: socket.socket | None = None) -> None:
        """Bind address, or serve `bound`, the socket an image before bound there."""
        self.loop = loop
        self.address = address
        self.find = find
        self.sock = bound if bound is not None else self._bind(address)
        self.strangers = Strangers(loop)
        self._resume: Timer | None = None
        self.loop.add_reader(self.sock.fileno(), self._readable)

    @staticmethod
    def _bind(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if address.startswith("@"):
            sock.bind("\0" + address[1:])
        else:
            _unlink(address)
            sock.bind(address)
            # Workers may run as other users; the sender's pid, not the file
            # mode, decides whether a datagram counts.
            os.chmod(address, 0o666)
        return sock

    def _readable(self) -> None:
        dropped = self.strangers.count
        self._drain()
        if self.strangers.count > dropped:
            # Strangers are writing: read again only after a pause, so that a
            # flood costs a few percent of a core however fast it is sent.
            self.loop.remove_reader(self.sock.fileno())
            self._resume = self.loop.call_later(FLOOD_PAUSE, self._read_again)

    def _drain(self) -> None:
        ancillary_size = socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(4 * MAX_FDS)
        for _ in range(BATCH):
            try:
                payload, ancillary, _, _ = self.sock.recvmsg(MAX_DATAGRAM, ancillary_size,
                                                             socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("notify socket: %s", exc)
                return
            pid = close_passed_fds(ancillary)
            self._handle(pid, payload)

    def _read_again(self) -> None:
        self._resume = None
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _handle(self, pid: int | None, payload: bytes) -> None:
        if pid is None or self.strangers.known(pid):
            self.strangers.drop(pid)
            return
        instance = self.find(pid)
        if instance is None:
            self.strangers.drop(pid)
            return
        fields = parse_notify(payload)
        if "STATUS" in fields:
            instance.report_status(fields["STATUS"][:STATUS_TEXT_MAX])
        if fields.get("READY") == "1" and instance.config.ready.kind == "notify":
            instance.handle(Event.UP)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        self.strangers.close()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if not self.address.startswith("@"):
            _unlink(self.address)


class Strangers:
    """Datagrams from processes that are no worker nor in a worker's group:
    dropped for the cost of a dict lookup once a sender is known, and summed
    up in the log at most once a second."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.count = 0  # dropped since the daemon started
        self._pids: dict[int | None, int] = {}  # since the last report: sender -> datagrams
        self._report: Timer | None = None

    def known(self, pid: int) -> bool:
        return pid in self._pids

    def drop(self, pid: int | None) -> None:
        self.count += 1
        self._pids[pid] = self._pids.get(pid, 0) + 1
        if self._report is None:
            self._report = self.loop.call_later(STRANGERS_REPORT_EVERY, self._write_report)

    def _write_report(self) -> None:
        # The senders are forgotten with each report: a pid may be reused.
        self._report = None
        senders, self._pids = self._pids, {}
        shown = ", ".join(str(pid) for pid in list(senders)[:STRANGER_PIDS_SHOWN])
        more = len(senders) - STRANGER_PIDS_SHOWN
        log.warning("notify socket: ignored %d datagrams from %d senders that are no "
                    "worker (pids %s%s)", sum(senders.values()), len(senders), shown,
                    f" and {more} more" if more > 0 else "")

    def close(self) -> None:
        if self._report is not None:
            self._report.cancel()
            self._write_report()


class TcpProbe:
    """Connects to 127.0.0.1:PORT until it succeeds or the instance moves on."""

    def __init__(self, loop: Loop, instance: Instance, port: int) -> None:
        self.loop = loop
        self.instance = instance
        self.pid = instance.pid
        self.port = port
        self.sock: socket.socket | None = None
        self._attempt()

    def _current(self) -> bool:
        return self.instance.state is State.STARTING and self.instance.pid == self.pid

    def _attempt(self) -> None:
        if not self._current():
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code == 0:
            sock.close()
            self.instance.handle(Event.UP)
        elif code == errno.EINPROGRESS:
            self.sock = sock
            self.loop.add_writer(sock.fileno(), self._connected)
        else:
            sock.close()
            self.loop.call_later(TCP_RETRY, self._attempt)

    def _connected(self) -> None:
        sock = self.sock
        assert sock is not None
        self.loop.remove_writer(sock.fileno())
        self.sock = None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sock.close()
        if code == 0 and self._current():
            self.instance.handle(Event.UP)
        else:
            self.loop.call_later(TCP_RETRY, self._attempt)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
