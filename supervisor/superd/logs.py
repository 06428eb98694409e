"""Worker output: the pipes superd owns, and which log file each one feeds.

Each instance's stdout (and stderr, unless merged) is a pipe whose read end
the daemon drains in the loop into the instance's LogFile (logfile.py), which
moves the bytes with splice(2) when nobody follows the log; or, with
`timestamps` or `console` set, through a LineShaper (lines.py), line by line.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .config import LogConfig
from .lines import Console, LineShaper
from .logfile import BUDGET, DropTally, LogFile, NoFile
from .loop import Loop, Timer
from .names import log_name
from .running import RunningConfig

log = logging.getLogger("superd")

PIPE_SIZE = 1 << 20
# After a wake-up that moved less than BATCH, the pipe is left to fill for GATHER
# seconds: a flood then costs a few hundred wake-ups a second, not one per write.
BATCH = 256 << 10
GATHER = 0.0005  # the selector rounds up to 1 ms; asking for 1 ms could cost 2
DRAIN_BUDGET = 64 << 20  # at reap time: what the dead worker left, bounded against grandchildren

# (instance name, path, message): a file started failing, for each instance writing it.
InstanceFailureReport = Callable[[str, str, str], None]


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
    stream: str  # "stdout" or "stderr"
    shaper: LineShaper | None = None  # None: bytes as they come, spliced if possible
    resume: Timer | None = None

    def take_from(self, budget: int) -> int | None:
        """Move up to budget bytes on; how many, or None at EOF."""
        mover = self.target if self.shaper is None else self.shaper
        return mover.take_from(self.read_end, budget)


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


NO_FILE = ""  # the path of a stream that writes no file (`file: false`)


def log_path(log_dir: str, name: str, settings: LogConfig, suffix: str) -> str:
    """Where one stream goes: its own file, the default one, or NO_FILE."""
    if settings.file is False:
        return NO_FILE
    if isinstance(settings.file, str):
        return settings.file
    return os.path.join(log_dir, log_name(name)) + suffix


def log_paths(log_dir: str, name: str, stdout: LogConfig, stderr: LogConfig) \
        -> tuple[str, str | None]:
    """Where an instance's stdout and stderr go (None: stderr joins stdout)."""
    out = log_path(log_dir, name, stdout, ".out.log")
    if stderr.merge:
        return out, None
    return out, log_path(log_dir, name, stderr, ".err.log")


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
        # superd's own stdout and stderr, for `console: true`: only in the
        # foreground (detached, they are its log file).
        self.consoles: dict[str, Console] = {}

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
        if path == NO_FILE:
            return NoFile(settings)  # its own: followers of two streams must not meet
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

    def _console(self, stream: str) -> Console | None:
        if self.daemon_log is not None:
            return None
        console = self.consoles.get(stream)
        if console is None:
            fd = 1 if stream == "stdout" else 2
            try:
                console = self.consoles[stream] = Console(self.loop, fd, f"superd's {stream}")
            except OSError as exc:  # closed: lines go to the files alone
                log.warning("no console lines: cannot write to superd's %s: %s", stream,
                            exc.strerror or exc)
                return None
        return console

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
        write_ends = [self._capture(name, entry, "stdout")]
        try:
            if entry.stderr is not None:
                write_ends.append(self._capture(name, entry, "stderr"))
            yield write_ends[0], write_ends[-1]
        finally:
            for write_end in write_ends:
                os.close(write_end)

    def _capture(self, name: str, entry: InstanceLogs, stream: str) -> int:
        read_end, write_end = make_pipe()
        try:
            self._start_capture(name, entry, read_end, stream)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        return write_end

    def _start_capture(self, name: str, entry: InstanceLogs, read_end: int, stream: str,
                       pending: bytes = b"") -> None:
        """Drain read_end into the stream's file, line by line if its settings say so."""
        _, stdout, stderr = entry.settings
        settings, target = (stderr, entry.stderr) if stream == "stderr" and entry.stderr \
            else (stdout, entry.stdout)
        shaper = None
        if settings.shaped or pending:
            console = self._console(stream) if settings.console else None
            shaper = LineShaper(target, self.loop, name, settings.timestamps, console, pending)
        capture = Capture(read_end, target, stream, shaper)
        entry.captures.append(capture)
        self._listen(entry, capture)

    def _pump(self, entry: InstanceLogs, capture: Capture) -> None:
        moved = capture.take_from(BUDGET)
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
            if capture.take_from(DRAIN_BUDGET) is None:
                self._close_capture(entry, capture)
            elif capture.shaper is not None:
                capture.shaper.flush()  # its last line, even without a newline

    def _close_captures(self, entry: InstanceLogs) -> None:
        for capture in list(entry.captures):
            capture.take_from(DRAIN_BUDGET)
            self._close_capture(entry, capture)

    def _close_capture(self, entry: InstanceLogs, capture: Capture) -> None:
        if capture.resume is not None:
            capture.resume.cancel()
        if capture.shaper is not None:
            capture.shaper.close()
        self.loop.remove_reader(capture.read_end)
        os.close(capture.read_end)
        entry.captures.remove(capture)

    # -- hand-over to a new image (a re-exec) -----------------------------------
    def pipes(self) -> dict[str, list[tuple[int, str, bytes]]]:
        """Instance name -> its open pipes, as (read end, stream, part line held)."""
        return {name: [(capture.read_end, capture.stream,
                        b"" if capture.shaper is None else capture.shaper.pending)
                       for capture in entry.captures]
                for name, entry in self.instances.items() if entry.captures}

    def adopt(self, name: str, stdout: LogConfig, stderr: LogConfig,
              pipes: list[tuple[int, str, bytes]]) -> None:
        """Drain pipes the image before left open, into their streams' files."""
        entry = self.logs_of(name, stdout, stderr)
        for read_end, stream, pending in pipes:
            self._start_capture(name, entry, read_end, stream, pending)

    def console_output(self) -> dict[str, bytes]:
        """What superd's stdout and stderr have not taken yet."""
        return {stream: console.pending() for stream, console in self.consoles.items()}

    def queue_console_output(self, pending: dict[str, bytes]) -> None:
        for stream, data in pending.items():
            console = self._console(stream) if data else None
            if console is not None:
                console.write(data)

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
        for console in self.consoles.values():
            console.close()

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
