"""The one event loop: a selector, a heap of timers and signal wake-ups.

Signal handlers do nothing but let CPython write the signal number to the
wake-up pipe; the loop reads it and runs the registered callback in normal
code.  The loop's only blocking call is select() with the next timer's
deadline as its timeout, so an idle daemon never wakes up.

Fault boundary: an exception that a callback's owner did not handle costs
that callback, never the loop.  It is logged with its traceback; a timer that
raised is simply done; a signal callback stays (the next signal may find it
working again, and a dropped SIGCHLD handler would strand every worker); an
fd callback is paused for FD_PAUSE, because a level-triggered fd whose
callback fails before consuming its input would call back at once, forever:
one broken owner must not spin the loop or flood the log.  Pausing rather
than dropping it means a passing fault heals by itself: a control listener
that failed once still accepts a second later, and a worker's output pipe is
drained again before the worker blocks on it for good.  To its owner the
registration stands throughout: remove_* ends it, add_* replaces it.  Only a
failure of the loop's own machinery leaves run().
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable

Callback = Callable[[], None]

log = logging.getLogger("superd")

FD_PAUSE = 1.0  # seconds an fd whose callback raised is left alone, then called again


class Timer:
    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._signal_callbacks: dict[int, Callback] = {}
        self._paused: dict[tuple[int, str], Timer] = {}  # (fd, role): its resumption
        self._running = False
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ)

    # -- file descriptors -------------------------------------------------
    # Each fd has one owner, who registers it and unregisters it before closing
    # it.  A second registration is refused: it means an fd was closed while
    # still registered and its number reused, or two objects think they own it.
    def add_reader(self, fd: int, callback: Callback) -> None:
        self._unpause(fd, "reader")
        _claim(self._readers, fd, callback, "reader")
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        self._unpause(fd, "reader")
        self._readers.pop(fd, None)
        self._update(fd)

    def has_reader(self, fd: int) -> bool:
        return fd in self._readers

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._unpause(fd, "writer")
        _claim(self._writers, fd, callback, "writer")
        self._update(fd)

    def has_writer(self, fd: int) -> bool:
        return fd in self._writers

    def remove_writer(self, fd: int) -> None:
        self._unpause(fd, "writer")
        self._writers.pop(fd, None)
        self._update(fd)

    def _update(self, fd: int) -> None:
        mask = (selectors.EVENT_READ if fd in self._readers else 0) | (
            selectors.EVENT_WRITE if fd in self._writers else 0
        )
        registered = fd in self._selector.get_map()
        if mask and registered:
            self._selector.modify(fd, mask)
        elif mask:
            self._selector.register(fd, mask)
        elif registered:
            self._selector.unregister(fd)

    # -- timers -----------------------------------------------------------
    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(time.monotonic() + max(0.0, delay), callback)

    def call_at(self, deadline: float, callback: Callback) -> Timer:
        timer = Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._sequence), timer))
        return timer

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                _contained(timer.callback, "timer %s", _name_of(timer.callback))

    # -- signals ----------------------------------------------------------
    def add_signal(self, signum: int, callback: Callback) -> None:
        self._signal_callbacks[signum] = callback
        signal.signal(signum, _wake_only)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _drain_signals(self) -> None:
        received: list[int] = []
        while True:
            try:
                data = os.read(self._wake_read, 512)
            except BlockingIOError:
                break
            if not data:
                break
            received.extend(data)
        # Several identical signals mean one piece of work (one reap pass).
        for signum in dict.fromkeys(received):
            callback = self._signal_callbacks.get(signum)
            if callback is not None:
                _contained(callback, "%s handler %s", _signal_name(signum), _name_of(callback))

    # -- running ----------------------------------------------------------
    def run(self) -> None:
        self._running = True
        while self._running:
            events = self._selector.select(self._next_timeout())
            # Signals first: a child that died is reaped before any request
            # or timer can act on a stale picture of it.
            ready = sorted(events, key=lambda event: event[0].fd != self._wake_read)
            registered = self._selector.get_map()
            for key, mask in ready:
                # An fd closed by an earlier callback of this round may already
                # be a new pipe or socket: its event is stale.  Readiness is
                # level-triggered, so an fd that is still ready is reported
                # again by the next select.
                if registered.get(key.fd) is key:
                    self._dispatch(key.fd, mask)
            self._run_due_timers()

    def _dispatch(self, fd: int, mask: int) -> None:
        if fd == self._wake_read:
            self._drain_signals()
            return
        if mask & selectors.EVENT_READ:
            self._call_fd(self._readers, fd, "reader")
        if mask & selectors.EVENT_WRITE:
            self._call_fd(self._writers, fd, "writer")

    def _call_fd(self, table: dict[int, Callback], fd: int, role: str) -> None:
        callback = table.get(fd)
        if callback is None or _contained(callback, "fd %d %s %s; paused for %gs", fd, role,
                                          _name_of(callback), FD_PAUSE):
            return
        if table.get(fd) is callback:  # unless its owner has already replaced it
            del table[fd]
            self._update(fd)
            self._paused[(fd, role)] = self.call_later(
                FD_PAUSE, lambda: self._resume(table, fd, role, callback))

    def _resume(self, table: dict[int, Callback], fd: int, role: str,
                callback: Callback) -> None:
        del self._paused[(fd, role)]
        table[fd] = callback
        self._update(fd)

    def _unpause(self, fd: int, role: str) -> None:
        timer = self._paused.pop((fd, role), None)
        if timer is not None:
            timer.cancel()

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


class FdOwned(ValueError):
    """An fd that already has a reader (or writer) was registered again."""


def _claim(table: dict[int, Callback], fd: int, callback: Callback, role: str) -> None:
    if fd in table:
        raise FdOwned(f"fd {fd} already has a {role}: {table[fd]!r}")
    table[fd] = callback


def _contained(callback: Callback, what: str, *args: object) -> bool:
    """Run callback; log what it let escape (with the traceback) and say False."""
    try:
        callback()
    except Exception:
        log.exception("unhandled error in " + what, *args)
        return False
    return True


def _name_of(callback: Callback) -> str:
    # The qualified name, not repr(): no address, so repeats of one fault look alike.
    return getattr(callback, "__qualname__", type(callback).__qualname__)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _wake_only(signum: int, frame: object) -> None:
    """CPython has already written signum to the wake-up fd; nothing to do."""
