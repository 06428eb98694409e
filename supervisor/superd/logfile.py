"""One log file: writing worker output to it, size-based rotation, reading
its tail back, and the followers that see every byte written to it.

A file that cannot be written (full disk, EIO, file size limit, deleted
folder) never blocks the pipe that feeds it: its bytes are read and dropped,
counted, and writing is retried after a pause, on fresh data.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

from .config import LogConfig

log = logging.getLogger("superd")

CHUNK = 1 << 20
BUDGET = 1 << 20  # bytes moved per wake-up, so one flooding worker cannot starve the loop
RETRY_AFTER = 1.0  # seconds between write attempts while a file is failing
NLINK_CHECK_EVERY = 1.0  # seconds between checks that the file was not deleted under us
TAIL_BLOCK = 1 << 16
# JSON may spell one byte in 6 ("\\u0000"); these keep every frame under the 1 MiB limit.
TAIL_LIMIT = 160 << 10  # at most this much text answers one `logs` request
FOLLOW_CHUNK = 128 << 10  # at most this much output per event to followers

Follower = Callable[[bytes], None]
# (path, message): a file started failing; told once per episode.
FailureReport = Callable[[str, str], None]


class Follow:
    """A subscription to the bytes written to one log file; cancel() ends it."""

    def __init__(self, followers: list[Follower], follower: Follower) -> None:
        self._followers = followers
        self._follower = follower
        followers.append(follower)

    def cancel(self) -> None:
        if self._follower in self._followers:
            self._followers.remove(self._follower)


def _ignore_failure(path: str, message: str) -> None:
    pass


class DropTally:
    """Bytes dropped by all log files together: zero says none dropped any,
    without asking each of thousands."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0

    def add(self, count: int) -> None:
        self.total += count


class LogFile:
    """One log file with size-based rotation; owns its fd."""

    # Two per instance: slots keep each one small.
    __slots__ = ("path", "on_failure", "tally", "maxbytes", "backups", "fd", "size", "dropped",
                 "failing_since", "retry_at", "nlink_checked", "regular", "splice_ok",
                 "_followers")

    def __init__(self, path: str, settings: LogConfig,
                 on_failure: FailureReport = _ignore_failure,
                 tally: DropTally | None = None) -> None:
        self.path = path
        self.on_failure = on_failure
        self.tally = tally or DropTally()
        self.maxbytes = settings.maxbytes
        self.backups = settings.backups
        self.fd: int | None = None
        self.size = 0
        self.dropped = 0
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self.nlink_checked = 0.0
        self.regular = True
        self.splice_ok = os.environ.get("SUPERD_NO_SPLICE") is None
        self._followers: list[Follower] = []

    def follow(self, follower: Follower) -> Follow:
        """Call follower with every chunk written from now on."""
        return Follow(self._followers, follower)

    def configure(self, settings: LogConfig) -> None:
        """Rotate by these settings from now on (a reload changed them)."""
        self.maxbytes = settings.maxbytes
        self.backups = settings.backups

    # -- opening ----------------------------------------------------------
    def open(self) -> None:
        self.close()
        try:
            fd = self._open_file()
        except OSError as exc:
            self._failed(exc)
            return
        self.fd = fd
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
        # Only regular files are rotated or sized (file: /dev/stdout is allowed).
        self.size = os.lseek(fd, 0, os.SEEK_END) if self.regular else 0
        if not self.regular:
            self.splice_ok = False  # splice into a full pipe would spin, not drop
        self.nlink_checked = time.monotonic()

    def _open_file(self) -> int:
        # No O_APPEND: splice(2) refuses files opened for appending.
        # O_NONBLOCK: a FIFO without reader or with a full buffer must not
        # block the loop (what does not fit is dropped and counted).
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            # Its folder is gone (or never was): made only then, since a
            # thousand instances open two thousand files at start and re-exec.
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            return os.open(self.path, flags, 0o644)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def reopen(self) -> None:
        self.open()
        if self.fd is not None:
            self._recovered()

    # -- moving bytes -----------------------------------------------------
    def _dropped(self, count: int) -> None:
        self.dropped += count
        self.tally.add(count)

    def take_from(self, pipe: int, budget: int) -> int | None:
        """Move up to budget bytes from pipe; how many, or None once the pipe hit EOF."""
        moved = 0
        while moved < budget:
            if not self._writable():
                count = _discard(pipe, min(CHUNK, budget - moved))
                if count is None:
                    return moved
                if count == 0:
                    return None
                self._dropped(count)
                moved += count
                continue
            room = self._room()
            count = self._move(pipe, room)
            if count is None:
                return moved
            if count == 0:
                return None
            moved += count
            if self.maxbytes and self.regular and self.size >= self.maxbytes:
                self.rotate()
            elif count < room and budget == BUDGET:
                # Short: the pipe is empty for now.  Not asking again saves a
                # failing syscall per wake-up; the level-triggered selector
                # calls back when more arrives.  Draining a dead worker asks on.
                return moved
        return moved

    def _room(self) -> int:
        """How much to ask for in one move: to the rotation point, in bounded chunks."""
        chunk = CHUNK if self.splice_ok and not self._followers else FOLLOW_CHUNK
        if not self.maxbytes or not self.regular:
            return chunk
        return max(1, min(chunk, self.maxbytes - self.size))

    def _move(self, pipe: int, size: int) -> int | None:
        """Bytes moved; 0 at EOF; None when the pipe is empty or the file failed."""
        if self.splice_ok and not self._followers:
            try:
                count = os.splice(pipe, self._fd(), size)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS):
                    self.splice_ok = False
                    return self._copy(pipe, min(size, FOLLOW_CHUNK))
                self._failed(exc)
                return None
            self.size += count
            return count
        return self._copy(pipe, size)

    def _copy(self, pipe: int, size: int) -> int | None:
        try:
            data = os.read(pipe, size)
        except BlockingIOError:
            return None
        if data:
            self.write(data)
        return len(data)

    def write(self, data: bytes) -> None:
        """Write bytes already read (read path, or the daemon's own messages)."""
        for follower in list(self._followers):
            follower(data)
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd(), view)
            except OSError as exc:
                self._failed(exc)
                self._dropped(len(view))
                return
            self.size += written
            view = view[written:]

    def _fd(self) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "log file is not open")
        return self.fd

    # -- failures ---------------------------------------------------------
    def _writable(self) -> bool:
        now = time.monotonic()
        if self.failing_since is None:
            if self.regular and now - self.nlink_checked >= NLINK_CHECK_EVERY:
                self._check_not_deleted(now)
            return self.fd is not None
        if now < self.retry_at:
            return False
        self.reopen()
        return self.failing_since is None

    def _check_not_deleted(self, now: float) -> None:
        self.nlink_checked = now
        if self.fd is not None and os.fstat(self.fd).st_nlink == 0:
            log.warning("%s was deleted; creating it again", self.path)
            self.open()

    def _failed(self, exc: OSError) -> None:
        # Whatever the reason (ENOSPC, EIO, EFBIG, a deleted folder...), the
        # answer is the same: drop, count, retry later; never stop draining.
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            reason = exc.strerror or str(exc)
            log.error("cannot write %s: %s; dropping output until it works again",
                      self.path, reason)
            self.on_failure(self.path, reason)
        self.retry_at = time.monotonic() + RETRY_AFTER
        self.close()

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info("writing %s again (%d bytes dropped so far)", self.path, self.dropped)
            self.failing_since = None

    # -- rotation ---------------------------------------------------------
    def rotate(self) -> None:
        """NAME -> NAME.1 -> ... -> NAME.backups; the oldest is dropped.

        NAME never goes missing: the full file is hard-linked to NAME.1 and a
        fresh file is renamed over NAME, so a reader always finds one.
        """
        self.close()
        try:
            self._shift_backups()
            fresh = f"{self.path}.new"
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o644)
            os.rename(fresh, self.path)
        except OSError as exc:
            log.error("cannot rotate %s: %s", self.path, exc.strerror or exc)
            self._start_over()
            return
        self.fd, self.size = fd, 0

    def _shift_backups(self) -> None:
        if self.backups == 0:
            return
        for index in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.rename(older, f"{self.path}.{index + 1}")
        newest = f"{self.path}.1"
        if os.path.exists(newest):  # backups: 1, so .1 is the oldest
            os.unlink(newest)
        try:
            os.link(self.path, newest)
        except OSError:  # no hard links on this filesystem
            os.rename(self.path, newest)

    def _start_over(self) -> None:
        """Rotation failed, so the file is still full: truncate it rather than grow."""
        self.open()
        if self.fd is None or not self.size:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            self._failed(exc)
            return
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0

    # -- reading back -----------------------------------------------------
    def tail(self, lines: int) -> bytes:
        """The last `lines` lines, from the file and, if needed, its backups."""
        chunks: list[bytes] = []
        wanted = lines
        total = 0
        for path in [self.path, *(f"{self.path}.{i}" for i in range(1, self.backups + 1))]:
            # One line more from a backup: its last line may continue in the newer file.
            data = tail_file(path, wanted + (1 if chunks else 0), TAIL_LIMIT - total)
            chunks.insert(0, data)
            total += len(data)
            wanted -= count_lines(data)
            if wanted <= 0 or total >= TAIL_LIMIT:
                break
        text = b"".join(chunks)
        return keep_last_lines(text, lines)


def count_lines(data: bytes) -> int:
    """Lines, counting an unterminated last line as one."""
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def keep_last_lines(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    body = data[:-1] if data.endswith(b"\n") else data
    cut = len(body)
    for _ in range(lines):
        cut = body.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1:]


def tail_file(path: str, lines: int, limit: int, block: int = TAIL_BLOCK) -> bytes:
    """Read backwards from the end of path until `lines` lines or `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and len(data) < limit and count_lines(data) <= lines:
            step = min(block, position, limit - len(data))
            position -= step
            data = os.pread(fd, step, position) + data
        return keep_last_lines(data, lines)
    finally:
        os.close(fd)


def _discard(pipe: int, size: int) -> int | None:
    try:
        return len(os.read(pipe, size))
    except BlockingIOError:
        return None


