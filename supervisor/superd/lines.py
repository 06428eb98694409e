"""Worker output line by line, for `timestamps: true` and `console: true`.

Without either, output goes from pipe to file as bytes (logs.py, splice).
With them, a LineShaper reads the pipe itself and writes whole lines: each
stamped with the RFC 3339 local time at which superd read it, to the log
file, and prefixed `INSTANCE | ` to the console, superd's own stdout or
stderr.  A part line waiting for its newline is held, at most MAX_PARTIAL
bytes and FLUSH_AFTER seconds, then written as a line of its own (ended by
a newline when stamped, so that every stamp starts a line).

The console is written without ever blocking the loop: from a bounded
buffer, as the terminal, pipe or journal socket takes it; whole lines go
in, so lines of different instances never mix.  What does not fit is
dropped and counted.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time

from .logfile import FOLLOW_CHUNK, LogFile
from .loop import Loop, Timer

log = logging.getLogger("superd")

MAX_PARTIAL = 64 << 10
FLUSH_AFTER = 0.5
CONSOLE_BUFFER = 1 << 20


class Stamps:
    """RFC 3339 local times with microseconds, `2026-12-01T08:44:13.123456+01:00 `;
    the part that changes once a second is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._zone = ""

    def at(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            local = time.localtime(second)
            offset = local.tm_gmtoff or 0
            sign = "-" if offset < 0 else "+"
            hours, minutes = divmod(abs(offset) // 60, 60)
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            self._zone = f"{sign}{hours:02d}:{minutes:02d} "
        micros = min(999_999, round((now - second) * 1e6))
        return f"{self._prefix}.{micros:06d}{self._zone}".encode()


STAMPS = Stamps()


class Console:
    """superd's own stdout or stderr, written from a bounded buffer."""

    def __init__(self, loop: Loop, fd: int, name: str) -> None:
        self.loop = loop
        self.name = name
        self.out = _unblocking_writer(fd)
        self.buffer = bytearray()
        self.dropped = 0
        self._dropping = False

    def write(self, lines: bytes) -> None:
        """Queue whole lines; write what the fd takes now."""
        if len(self.buffer) + len(lines) > CONSOLE_BUFFER:
            self._drop(len(lines))
            return
        if self._dropping:
            log.info("%s takes console lines again (%d bytes dropped)", self.name, self.dropped)
            self._dropping = False
        self.buffer += lines
        self._flush()

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._dropping:
            self._dropping = True
            log.warning("%s is not keeping up; dropping console lines", self.name)

    def _flush(self) -> None:
        try:
            written = self.out.write(self.buffer)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                log.warning("cannot write console lines to %s: %s", self.name, exc.strerror)
            self._drop(len(self.buffer))
            written = len(self.buffer)
        del self.buffer[:written]
        watching = self.loop.has_writer(self.out.fileno())
        if self.buffer and not watching:
            self.loop.add_writer(self.out.fileno(), self._flush)
        elif not self.buffer and watching:
            self.loop.remove_writer(self.out.fileno())

    def pending(self) -> bytes:
        return bytes(self.buffer)

    def close(self) -> None:
        """Write what the fd takes now (the last lines before an exit), then close."""
        if self.loop.has_writer(self.out.fileno()):
            self.loop.remove_writer(self.out.fileno())
        try:
            self.out.write(self.buffer)
        except OSError:
            pass
        self.out.close()


class _Writer:
    """Non-blocking writes to a descriptor whose flags superd must not change
    (a terminal or pipe it shares with whoever started it)."""

    def __init__(self, fd: int, sock: socket.socket | None) -> None:
        self.fd, self.sock = fd, sock

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes | bytearray) -> int:
        if not data:
            return 0
        try:
            if self.sock is not None:
                return self.sock.send(data, socket.MSG_DONTWAIT)
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


def _unblocking_writer(fd: int) -> _Writer:
    """A terminal or pipe is opened afresh (its own, non-blocking, file
    description); a socket (the journal's) is sent to with MSG_DONTWAIT."""
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        return _Writer(own, None)
    except OSError:
        pass
    copy = os.dup(fd)
    try:
        return _Writer(copy, socket.socket(fileno=copy))
    except OSError:
        os.set_blocking(copy, False)  # neither: a file, which never blocks anyway
        return _Writer(copy, None)


class LineShaper:
    """One pipe's output as whole lines: to its file (stamped, if asked) and
    to the console (prefixed, if asked)."""

    __slots__ = ("target", "loop", "prefix", "timestamps", "console", "pending", "_flush_timer")

    def __init__(self, target: LogFile, loop: Loop, name: str, timestamps: bool,
                 console: Console | None, pending: bytes = b"") -> None:
        self.target = target
        self.loop = loop
        self.prefix = f"{name} | ".encode()
        self.timestamps = timestamps
        self.console = console
        self.pending = pending  # a part line (handed over by a re-exec, or read since)
        self._flush_timer: Timer | None = None
        if pending:
            self._flush_timer = loop.call_later(FLUSH_AFTER, self._flush_due)

    def take_from(self, pipe: int, budget: int) -> int | None:
        """Read up to budget bytes; how many, or None at EOF (the part line is
        written then)."""
        moved = 0
        while moved < budget:
            asked = min(FOLLOW_CHUNK, budget - moved)
            try:
                data = os.read(pipe, asked)
            except BlockingIOError:
                break
            if not data:
                self.flush()
                return None
            moved += len(data)
            self._feed(data)
            if len(data) < asked:
                break
        if self.pending and self._flush_timer is None:
            self._flush_timer = self.loop.call_later(FLUSH_AFTER, self._flush_due)
        return moved

    def _feed(self, data: bytes) -> None:
        held = self.pending + data if self.pending else data
        cut = held.rfind(b"\n") + 1
        self.pending = held[cut:]
        if cut:
            self._emit(held[:cut])
        if len(self.pending) > MAX_PARTIAL:
            self.flush()

    def _flush_due(self) -> None:
        self._flush_timer = None
        self.flush()

    def flush(self) -> None:
        """Write the part line held, as a line of its own."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self.pending:
            part, self.pending = self.pending, b""
            self._emit(part, whole=False)

    def _emit(self, lines: bytes, whole: bool = True) -> None:
        """lines: whole lines (ending with a newline), or one part line."""
        stamp = STAMPS.at(time.time()) if self.timestamps else b""
        ended = lines if whole else lines + b"\n"
        # Stamped, every line gets its own; else the bytes as they came, no newline of ours.
        self.target.write(_led(stamp, ended) if self.timestamps else lines)
        if self.console is not None:
            self.console.write(_led(self.prefix + stamp, ended))

    def close(self) -> None:
        self.flush()


def _led(head: bytes, lines: bytes) -> bytes:
    """Each of lines (ending with a newline) after head."""
    return head + lines[:-1].replace(b"\n", b"\n" + head) + b"\n"
