"""The daemon's own log: repeats limited, write failures survived and reported.

No fault may fill a disk through superd's log: a message that repeats from
one cause is written at most once per WINDOW, and the count of the repeats
left out is written with the next one (or, once the loop runs, by a timer
armed only while something is held back, so an idle daemon never wakes).

The cause of a record is its format string with its non-numeric arguments.
Numbers (pids, counts, sizes) change from one repeat of a fault to the next
and would defeat the limit if they counted; the strings name what failed and
why (an instance, a state, a path, an error), so two different faults are
never merged.  Keying on the format string alone would merge every
instance's transitions into one line a second.

Lines are written to the fd with os.write, so a failed write (full disk,
EIO, a file size limit) leaves no half-flushed Python buffer behind: the line
is dropped and counted, the failure is reported once per episode, and the
first line written again says how many were lost.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .events import log_error_event

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from .events import Event

WINDOW = 1.0  # seconds: at most one line per cause in this long
MAX_CAUSES = 1024  # causes remembered at once; past this the expired ones are forgotten

Clock = Callable[[], float]
Schedule = Callable[[float, Callable[[], None]], object]  # Loop.call_later
FailureReport = Callable[[str, str], None]  # (path, message)


def cause(record: logging.LogRecord) -> Hashable:
    """What makes two records repeats of one fault (see the module docstring)."""
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    words = tuple(str(arg) for arg in args
                  if isinstance(arg, bool) or not isinstance(arg, (int, float)))
    return (str(record.msg), record.levelno, words)


@dataclass(slots=True)
class _Seen:
    written_at: float
    repeats: int = 0
    last: logging.LogRecord | None = None  # the latest repeat held back


class RepeatLimiter(logging.Handler):
    """Passes a record to target unless its cause was written under WINDOW ago."""

    def __init__(self, target: logging.Handler, clock: Clock = time.monotonic,
                 window: float = WINDOW) -> None:
        super().__init__()
        self.target = target
        self.clock = clock
        self.window = window
        self._seen: dict[Hashable, _Seen] = {}
        self._schedule: Schedule | None = None
        self._timer_armed = False

    def use_timers(self, schedule: Schedule | None) -> None:
        """With a loop: write the count of held-back repeats when their window ends."""
        self._schedule = schedule
        self._timer_armed = False

    def emit(self, record: logging.LogRecord) -> None:
        now = self.clock()
        key = cause(record)
        seen = self._seen.get(key)
        if seen is not None and now - seen.written_at < self.window:
            seen.repeats += 1
            seen.last = record
            self._arm(seen.written_at + self.window - now)
            return
        if seen is not None and seen.repeats:
            _add_count(record, seen, now)
        self._remember(key, now)
        self.target.handle(record)

    def flush_repeats(self) -> None:
        """Write the count of every repeat still held back (at exit)."""
        self._timer_armed = False
        now = self.clock()
        for seen in self._seen.values():
            self._write_count(seen, now)

    def _on_timer(self) -> None:
        self._timer_armed = False
        now = self.clock()
        for seen in self._seen.values():
            if now - seen.written_at >= self.window:
                self._write_count(seen, now)
        waiting = [seen.written_at + self.window - now for seen in self._seen.values()
                   if seen.repeats]
        if waiting:
            self._arm(min(waiting))

    def _write_count(self, seen: _Seen, now: float) -> None:
        """The latest repeat held back, with the count of them all."""
        record = seen.last
        if not seen.repeats or record is None:
            return
        _add_count(record, seen, now)
        seen.written_at, seen.repeats, seen.last = now, 0, None
        _restamp(record)  # "the last Xs" end now: its time says so, and keeps the log in order
        self.target.handle(record)

    def _arm(self, delay: float) -> None:
        if self._schedule is not None and not self._timer_armed:
            self._timer_armed = True
            self._schedule(max(0.0, delay), self._on_timer)

    def _remember(self, key: Hashable, now: float) -> None:
        if len(self._seen) >= MAX_CAUSES:
            self._seen = {k: seen for k, seen in self._seen.items()
                          if now - seen.written_at < self.window}
            if len(self._seen) >= MAX_CAUSES:
                self._seen = {}  # that many causes at once: forget, rather than grow
        self._seen[key] = _Seen(now)


def _add_count(record: logging.LogRecord, seen: _Seen, now: float) -> None:
    times = "time" if seen.repeats == 1 else "times"
    record.msg = (f"{record.getMessage()} (repeated {seen.repeats} {times} "
                  f"in the last {now - seen.written_at:.1f}s)")
    record.args = None


def _restamp(record: logging.LogRecord) -> None:
    record.created = time.time()
    record.msecs = (record.created - int(record.created)) * 1000


class SecondsFormatter(logging.Formatter):
    """logging.Formatter's default time stamp, with the local time of each
    second formatted once: a thousand restarts write thousands of lines."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format,
                                                  self.converter(second)))
        return f"{self._second[1]},{int(record.msecs):03d}"  # as logging's '%s,%03d'


class LogWriter(logging.Handler):
    """Writes each formatted record as one line to fd; never raises, never blocks on
    a retry: a line that cannot be written is dropped and counted."""

    def __init__(self, fd: int, path: str) -> None:
        super().__init__()
        self.fd = fd
        self.path = path  # what the log_error event names
        self.on_failure: FailureReport | None = None
        self.lost = 0  # lines dropped in the current failure episode
        self.failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # a bad format string: logging's own report, as for any handler
            self.handleError(record)
            return
        if self.failing:
            line = self._recovery_note() + line
        try:
            _write_all(self.fd, line.encode(errors="replace"))
        except OSError as exc:
            self._failed(exc)
            return
        self.failing, self.lost = False, 0

    def _recovery_note(self) -> str:
        note = logging.makeLogRecord({
            "name": "superd", "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": "writing this log again (lines lost: %d)", "args": (self.lost,)})
        return self.format(note) + "\n"

    def _failed(self, exc: OSError) -> None:
        self.lost += 1
        if self.failing:
            return
        self.failing = True
        if self.on_failure is not None:
            self.on_failure(self.path, exc.strerror or str(exc))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class DaemonLog:
    """The daemon's own log handlers; wired to the loop and the bus once they exist."""

    def __init__(self, writer: LogWriter, limiter: RepeatLimiter) -> None:
        self.writer = writer
        self.limiter = limiter

    def attach(self, schedule: Schedule, publish: Callable[[Event], None]) -> None:
        """Count repeats on timers; report write failures as log_error events.

        The event is published from the loop, not from inside the failed
        write: a log call can come from anywhere, even from a publish.
        """
        def report(path: str, message: str) -> None:
            schedule(0.0, lambda: publish(log_error_event(None, path, message)))

        self.limiter.use_timers(schedule)
        self.writer.on_failure = report

    def detach(self) -> None:
        """The loop is gone: write what is held back, and stop reporting."""
        self.limiter.use_timers(None)
        self.limiter.flush_repeats()
        self.writer.on_failure = None


def install(logger: logging.Logger, fd: int, path: str, fmt: str) -> DaemonLog:
    # No record needs its caller's file and line, thread or process: finding
    # them was most of the cost of a log line (logging's documented switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    writer = LogWriter(fd, path)
    writer.setFormatter(SecondsFormatter(fmt))
    limiter = RepeatLimiter(writer)
    logger.addHandler(limiter)
    return DaemonLog(writer, limiter)
