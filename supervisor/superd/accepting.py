"""Accepting clients on a listening socket, in the loop, without spinning.

Each wake-up accepts at most a batch of clients, so a connect storm cannot
starve the loop.  A client that gave up before it was accepted (ECONNABORTED)
is skipped.  Another failure (out of descriptors, of buffers) leaves the
socket readable, so retrying at once would spin: the socket is not watched
for a pause that doubles from ACCEPT_RETRY's first to its longest, then it is
watched again.  The first failure of such an episode is logged, and the first
success after it; the tries in between are not, so the log is not flooded.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from .loop import Loop, Timer

log = logging.getLogger("superd")

ACCEPT_RETRY = (0.1, 1.0)  # first and longest pause after accept() failed
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)

Admit = Callable[[socket.socket], None]
OutOfFds = Callable[[], bool]


class Acceptor:
    """The owner of one listening socket: watches it, hands each accepted client
    to `admit`, backs off while accept() fails, and closes the socket.

    `what` names the clients in the log ("control connections"); `meanwhile`
    tells, in the line about the first failure, what happens until accepting
    works again.  `out_of_fds`, if given, is called when accept() failed for
    want of descriptors; True means it dealt with a waiting client itself, and
    accepting goes on without a pause."""

    def __init__(self, loop: Loop, sock: socket.socket, admit: Admit, *, what: str,
                 batch: int, meanwhile: str = "retrying",
                 out_of_fds: OutOfFds | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.admit = admit
        self.what = what
        self.batch = batch
        self.meanwhile = meanwhile
        self.out_of_fds = out_of_fds
        self.failures = 0  # in the current episode of failing accept()
        self._retry: Timer | None = None
        sock.setblocking(False)
        self.resume()

    def on_readable(self) -> None:
        for _ in range(self.batch):
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue  # that client gave up; the next may not have
                self._note_failure(exc)
                if exc.errno in OUT_OF_FDS and self.out_of_fds is not None \
                        and self.out_of_fds():
                    continue
                self._pause()
                return
            self._note_success()
            self.admit(client)

    def hold(self) -> None:
        """Accept nobody until resume(): connects wait in the kernel's backlog."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.loop.remove_reader(self.fd)

    def resume(self) -> None:
        """Watch the socket again (at once, even in a pause after a failure)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self.loop.has_reader(self.fd):
            self.loop.add_reader(self.fd, self.on_readable)

    def close(self) -> None:
        self.hold()
        self.sock.close()

    def _pause(self) -> None:
        first, longest = ACCEPT_RETRY
        delay = min(first * 2 ** (self.failures - 1), longest)
        self.loop.remove_reader(self.fd)
        self._retry = self.loop.call_later(delay, self.resume)

    def _note_failure(self, exc: OSError) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warning("cannot accept %s: %s; %s", self.what, exc.strerror or exc,
                        self.meanwhile)

    def _note_success(self) -> None:
        if self.failures:
            log.info("accepting %s again (%d failed tries)", self.what, self.failures)
            self.failures = 0
