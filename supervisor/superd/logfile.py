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
from array import array
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
# When bytes were written, for `logs` of several instances in time order: at
# most MAX_MARKS (offset, time) pairs per file, one per MARK_GRAIN seconds
# at best, thinned from the oldest as they accumulate.
MAX_MARKS = 32
MARK_GRAIN = 0.01

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
                 "_followers", "marks", "previous_marks")

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
        # offset, time, offset, time...: of this file, and of NAME.1
        self.marks: array[float] | None = None
        self.previous_marks: array[float] | None = None

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
            self._grew(count)
            return count
        return self._copy(pipe, size)

    def _copy(self, pipe: int, size: int) -> int | None:
        try:
            data = os.read(pipe, size)
        except BlockingIOError:
            return None
        if data:
            self._deliver(data)  # take_from has found the file writable
        return len(data)

    def write(self, data: bytes) -> None:
        """Write bytes read elsewhere (whole lines, from a LineShaper)."""
        if self._writable():
            self._deliver(data)
        else:
            self._tell_followers(data)
            self._dropped(len(data))

    def _deliver(self, data: bytes) -> None:
        self._tell_followers(data)
        self._write_out(data, new=True)

    def _tell_followers(self, data: bytes) -> None:
        for follower in list(self._followers):
            follower(data)

    def _write_out(self, data: bytes, new: bool) -> None:
        """All of data to the file (new: just written by the worker, so marked)."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd(), view)
            except OSError as exc:
                self._failed(exc)
                self._dropped(len(view))
                return
            if new:
                self._grew(written)
            else:
                self.size += written
            view = view[written:]

    def _grew(self, count: int) -> None:
        self.size += count
        now = time.time()
        marks = self.marks
        if marks is None:
            self.marks = array("d", (self.size, now))
        elif now - marks[-1] < MARK_GRAIN:
            marks[-2] = self.size  # these bytes were written as good as then
        else:
            if len(marks) >= 2 * MAX_MARKS:
                marks = self.marks = thinned(marks)
            marks.extend((self.size, now))

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

        The cut is at a line boundary: the last newline at or before
        maxbytes (a line longer than maxbytes alone is split there); the
        part line after it starts the fresh file.  NAME never goes missing:
        the full file is hard-linked to NAME.1 and a fresh file is renamed
        over NAME, so a reader always finds one.
        """
        try:
            carried = self._cut_at_line_boundary()
        except OSError as exc:
            log.error("cannot rotate %s: %s", self.path, exc.strerror or exc)
            self._start_over()
            return
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
        self._carry(carried)

    def _cut_at_line_boundary(self) -> bytes:
        """Truncate the file after its last newline at or before maxbytes;
        the bytes cut off, which go on in the fresh file."""
        reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # ours is write-only
        try:
            boundary = last_line_end(reader, min(self.size, self.maxbytes))
            carried = os.pread(reader, self.size - boundary, boundary)
        finally:
            os.close(reader)
        os.ftruncate(self._fd(), boundary)
        self.size = boundary
        self._split_marks(boundary)
        return carried

    def _split_marks(self, boundary: int) -> None:
        """The marks up to boundary are NAME.1's from now on; the rest are the
        fresh file's, from its start."""
        marks = self.marks
        if marks is None:
            self.previous_marks = None
            return
        old, fresh = array("d"), array("d")
        for index in range(0, len(marks), 2):
            offset, when = marks[index], marks[index + 1]
            if offset <= boundary:
                old.extend((offset, when))
            else:
                fresh.extend((offset - boundary, when))
        self.previous_marks, self.marks = old or None, fresh or None

    def _carry(self, data: bytes) -> None:
        """Write the part line cut off at rotation (followers had it already;
        its marks moved with it)."""
        self._write_out(data, new=False)

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

    def timed_tail(self, lines: int, limit: int = TAIL_LIMIT) -> list[tuple[float, bytes]]:
        """The last `lines` lines (at most `limit` bytes) with the time each was
        written (as far as the marks tell: 0.0 for lines older than every
        mark), oldest first."""
        found: list[tuple[float, bytes]] = []
        total = 0
        generations = [(self.path, self.marks), (f"{self.path}.1", self.previous_marks),
                       *((f"{self.path}.{i}", None) for i in range(2, self.backups + 1))]
        for path, marks in generations[:self.backups + 1]:
            data, end = tail_file_with_end(path, lines - len(found), limit - total)
            total += len(data)
            found[:0] = timed_lines(data, end, marks)
            if len(found) >= lines or total >= limit or not data:
                break
        return found[-lines:] if lines > 0 else []


class NoFile(LogFile):
    """A stream with `file: false`: its bytes go to followers (and the
    console) only; there is nothing to rotate or read back."""

    __slots__ = ()

    def __init__(self, settings: LogConfig) -> None:
        super().__init__("", settings)
        self.regular = False
        self.splice_ok = False

    def open(self) -> None:
        pass

    def reopen(self) -> None:
        pass

    def take_from(self, pipe: int, budget: int) -> int | None:
        moved = 0
        while moved < budget:
            count = self._copy(pipe, min(FOLLOW_CHUNK, budget - moved))
            if count is None:
                return moved
            if count == 0:
                return None
            moved += count
        return moved

    def write(self, data: bytes) -> None:
        self._tell_followers(data)

    def _deliver(self, data: bytes) -> None:
        self._tell_followers(data)

    def tail(self, lines: int) -> bytes:
        return b""

    def timed_tail(self, lines: int, limit: int = TAIL_LIMIT) -> list[tuple[float, bytes]]:
        return []


def merged_tail(named: list[tuple[str, LogFile]], lines: int) -> list[tuple[str, bytes]]:
    """The last `lines` lines of several files, each with its name, merged in
    the order they were written (per file, in file order).  Each file is
    read for its share of TAIL_LIMIT, so many files cost no more than one."""
    share = max(1024, TAIL_LIMIT // max(1, len(named)))
    timed = []
    for rank, (name, log_file) in enumerate(named):
        for sequence, (when, line) in enumerate(log_file.timed_tail(lines, share)):
            timed.append((when, rank, sequence, name, line))
    timed.sort(key=lambda entry: entry[:3])
    return [(name, line) for _, _, _, name, line in timed[-lines:]] if lines > 0 else []


def thinned(marks: array[float]) -> array[float]:
    """Every other mark of the older half dropped: recent lines keep the
    finest order, older ones a coarser one."""
    half = len(marks) // 4 * 2  # of the flat array: a whole number of pairs
    kept = array("d")
    for start in range(0, half, 4):
        kept.extend(marks[start:start + 2])
    kept.extend(marks[half:])
    return kept


def time_of(marks: array[float] | None, end: int) -> float:
    """When the line ending at offset `end` was written (0.0: before any mark)."""
    if marks is None:
        return 0.0
    for index in range(0, len(marks), 2):
        if marks[index] >= end:
            return marks[index + 1]
    return marks[-1]


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
    return tail_file_with_end(path, lines, limit, block)[0]


def tail_file_with_end(path: str, lines: int, limit: int,
                       block: int = TAIL_BLOCK) -> tuple[bytes, int]:
    """tail_file, and the file's size when it was read (the offset the data ends at)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b"", 0
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and len(data) < limit and count_lines(data) <= lines:
            step = min(block, position, limit - len(data))
            position -= step
            data = os.pread(fd, step, position) + data
        return keep_last_lines(data, lines), end
    finally:
        os.close(fd)


def timed_lines(data: bytes, end: int, marks: array[float] | None) \
        -> list[tuple[float, bytes]]:
    """data (which ends at offset `end` of its file) as lines, each with its time."""
    found = []
    offset = end - len(data)
    for line in data.splitlines(keepends=True):
        offset += len(line)
        found.append((time_of(marks, offset), line))
    return found


def last_line_end(fd: int, limit: int, block: int = TAIL_BLOCK) -> int:
    """The offset just after the last newline in the first `limit` bytes of
    fd; `limit` itself when there is none (one line longer than that)."""
    position = limit
    while position > 0:
        start = max(0, position - block)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return limit


def _discard(pipe: int, size: int) -> int | None:
    try:
        return len(os.read(pipe, size))
    except BlockingIOError:
        return None


