"""Worker output: the pipes superd owns, the log files, rotation, tail and follow.

Each instance's stdout (and stderr, unless merged) is a pipe whose read end
the daemon drains in the loop.  Bytes go from the pipe to the file with
splice(2) when nobody follows the log (no copy through Python), and through
read/write when followers need the bytes too or splice is refused.  A file
that cannot be written (full disk, EIO, file size limit, deleted folder)
never blocks the pipe: its bytes are read and dropped, counted, and writing
is retried after a pause, on fresh data.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .config import LogConfig
from .loop import Loop, Timer
from .names import log_name
from .running import RunningConfig

log = logging.getLogger("superd")

PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
BUDGET = 1 << 20  # bytes moved per wake-up, so one flooding worker cannot starve the loop
# After a wake-up that moved less than BATCH, the pipe is left to fill for GATHER
# seconds: a flood then costs a few hundred wake-ups a second, not one per write.
BATCH = 256 << 10
GATHER = 0.0005  # the selector rounds up to 1 ms; asking for 1 ms could cost 2
DRAIN_BUDGET = 64 << 20  # at reap time: what the dead worker left, bounded against grandchildren
RETRY_AFTER = 1.0  # seconds between write attempts while a file is failing
NLINK_CHECK_EVERY = 1.0  # seconds between checks that the file was not deleted under us
TAIL_BLOCK = 1 << 16
# JSON may spell one byte in 6 ("\\u0000"); these keep every frame under the 1 MiB limit.
TAIL_LIMIT = 160 << 10  # at most this much text answers one `logs` request
FOLLOW_CHUNK = 128 << 10  # at most this much output per event to followers

Follower = Callable[[bytes], None]
# (path, message): a file started failing; told once per episode.
FailureReport = Callable[[str, str], None]
# (instance name, path, message): the same, for each instance writing that file.
InstanceFailureReport = Callable[[str, str, str], None]


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


def make_pipe() -> tuple[int, int]:
    """A pipe for a worker's output: non-blocking read end for us, blocking write end."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read_end, False)
    try:
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: keep the default
    return read_end, write_end


@dataclass(slots=True)
class Capture:
    """One live pipe from an instance's stream into its log file."""

    read_end: int
    target: LogFile
    resume: Timer | None = None


@dataclass(slots=True)
class InstanceLogs:
    stdout: LogFile
    stderr: LogFile | None  # None: merged into stdout
    settings: tuple[str, LogConfig, LogConfig]  # (log_dir, stdout, stderr) they came from
    captures: list[Capture] = field(default_factory=list)

    def files(self) -> list[LogFile]:
        if self.stderr is None or self.stderr is self.stdout:
            return [self.stdout]
        return [self.stdout, self.stderr]

    def dropped(self) -> int:
        return sum(log_file.dropped for log_file in self.files())


def log_paths(log_dir: str, name: str, stdout: LogConfig, stderr: LogConfig) \
        -> tuple[str, str | None]:
    """Where an instance's stdout and stderr go (None: stderr joins stdout)."""
    base = os.path.join(log_dir, log_name(name))
    out = stdout.file or base + ".out.log"
    if stderr.merge:
        return out, None
    return out, stderr.file or base + ".err.log"


class Logs:
    """Every instance's output: pipes in, files out, tail and followers."""

    def __init__(self, running: RunningConfig, loop: Loop,
                 report_failure: InstanceFailureReport, daemon_log: str | None = None) -> None:
        self.running = running
        self.loop = loop
        self.report_failure = report_failure
        self.instances: dict[str, InstanceLogs] = {}
        # One LogFile per path: instances (or both streams) naming the same file
        # share its offset and rotation instead of overwriting each other.
        self.files: dict[str, LogFile] = {}
        self.drops = DropTally()
        self.daemon_log = daemon_log  # when detached: the daemon's stdout/stderr go there

    def logs_of(self, name: str, stdout: LogConfig, stderr: LogConfig) -> InstanceLogs:
        """The instance's files for these settings.  After a reload changed them
        (or log_dir), the next call with no pipe still open takes the new ones."""
        settings = (self.running.daemon.log_dir, stdout, stderr)
        entry = self.instances.get(name)
        if entry is not None and (entry.settings == settings or entry.captures):
            return entry
        replaced = entry is not None
        out_path, err_path = log_paths(settings[0], name, stdout, stderr)
        entry = InstanceLogs(self._file(out_path, stdout),
                             None if err_path is None else self._file(err_path, stderr),
                             settings)
        self.instances[name] = entry
        if replaced:  # only a replaced entry can leave a file unused (a scan of all)
            self._close_unused_files()
        return entry

    def _file(self, path: str, settings: LogConfig) -> LogFile:
        log_file = self.files.get(path)
        if log_file is None:
            log_file = self.files[path] = LogFile(path, settings, self._failed, self.drops)
            log_file.open()
        else:
            log_file.configure(settings)
        return log_file

    def _close_unused_files(self) -> None:
        used = {log_file.path for entry in self.instances.values() for log_file in entry.files()}
        for path in set(self.files) - used:
            self.files.pop(path).close()

    def _failed(self, path: str, message: str) -> None:
        """Tell once for each instance whose output goes to the failing file."""
        for name, entry in self.instances.items():
            if any(log_file.path == path for log_file in entry.files()):
                self.report_failure(name, path, message)

    @contextmanager
    def child_stdio(self, name: str, stdout: LogConfig,
                    stderr: LogConfig) -> Iterator[tuple[int, int]]:
        """Fresh pipes for a spawn: yields the write ends (stdout, stderr) for the
        child to inherit, and closes them once the fork is done.

        Pipes left by the previous run are drained and closed first.
        """
        previous = self.instances.get(name)
        if previous is not None:
            self._close_captures(previous)
        entry = self.logs_of(name, stdout, stderr)
        write_ends = [self._capture(entry, entry.stdout)]
        try:
            if entry.stderr is not None:
                write_ends.append(self._capture(entry, entry.stderr))
            yield write_ends[0], write_ends[-1]
        finally:
            for write_end in write_ends:
                os.close(write_end)

    def _capture(self, entry: InstanceLogs, target: LogFile) -> int:
        read_end, write_end = make_pipe()
        capture = Capture(read_end, target)
        entry.captures.append(capture)
        self._listen(entry, capture)
        return write_end

    def _pump(self, entry: InstanceLogs, capture: Capture) -> None:
        moved = capture.target.take_from(capture.read_end, BUDGET)
        if moved is None:
            self._close_capture(entry, capture)
        elif moved < BATCH:
            self.loop.remove_reader(capture.read_end)
            capture.resume = self.loop.call_later(GATHER, lambda: self._resume(entry, capture))

    def _listen(self, entry: InstanceLogs, capture: Capture) -> None:
        self.loop.add_reader(capture.read_end, lambda: self._pump(entry, capture))

    def _resume(self, entry: InstanceLogs, capture: Capture) -> None:
        # Pump at once: whatever gathered is there, and a select round is saved.
        capture.resume = None
        self._listen(entry, capture)
        self._pump(entry, capture)

    def exited(self, name: str) -> None:
        """The instance's main process was reaped: take everything it wrote.

        Pipes stay open after this: a grandchild may still hold the write
        end; they close at EOF or at the next spawn of the instance.
        """
        entry = self.instances.get(name)
        if entry is None:
            return
        for capture in list(entry.captures):
            if capture.target.take_from(capture.read_end, DRAIN_BUDGET) is None:
                self._close_capture(entry, capture)

    def _close_captures(self, entry: InstanceLogs) -> None:
        for capture in list(entry.captures):
            capture.target.take_from(capture.read_end, DRAIN_BUDGET)
            self._close_capture(entry, capture)

    def _close_capture(self, entry: InstanceLogs, capture: Capture) -> None:
        if capture.resume is not None:
            capture.resume.cancel()
        self.loop.remove_reader(capture.read_end)
        os.close(capture.read_end)
        entry.captures.remove(capture)

    # -- hand-over to a new image (a re-exec) -----------------------------------
    def pipes(self) -> dict[str, list[tuple[int, str]]]:
        """Instance name -> its open pipes, as (read end, path of the file it feeds)."""
        return {name: [(capture.read_end, capture.target.path) for capture in entry.captures]
                for name, entry in self.instances.items() if entry.captures}

    def adopt(self, name: str, stdout: LogConfig, stderr: LogConfig,
              pipes: list[tuple[int, str]]) -> None:
        """Drain pipes the image before left open, into the files they fed."""
        entry = self.logs_of(name, stdout, stderr)
        for read_end, path in pipes:
            target = next((f for f in entry.files() if f.path == path), None) \
                or self._file(path, stdout)  # a file a reload has since replaced
            capture = Capture(read_end, target)
            entry.captures.append(capture)
            self._listen(entry, capture)

    def reopen(self) -> None:
        """Reopen every file superd writes, for an external logrotate."""
        for log_file in self.files.values():
            log_file.reopen()
        if self.daemon_log is not None:
            reopen_stdio(self.daemon_log)
        log.info("log files reopened")

    def close(self) -> None:
        for entry in self.instances.values():
            self._close_captures(entry)
        for log_file in self.files.values():
            log_file.close()

    def dropped_by_instance(self) -> dict[str, int]:
        """Instance name -> bytes dropped, for the instances that dropped any."""
        if not self.drops.total:
            return {}  # the usual case, told by one number
        return {name: count for name, entry in self.instances.items()
                if (count := entry.dropped())}

    def file_for(self, name: str, stdout: LogConfig, stderr: LogConfig,
                 stream: str) -> LogFile:
        entry = self.logs_of(name, stdout, stderr)
        if stream == "stderr" and entry.stderr is not None:
            return entry.stderr
        return entry.stdout


def reopen_stdio(path: str) -> None:
    """Point fds 1 and 2 at path again (the daemon's own log when detached)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        log.error("cannot reopen %s: %s", path, exc.strerror or exc)
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
