"""Re-exec in place: ask the installed superd whether it can take over, then
exec it in this very process, so every worker stays a child of the same pid.

The check runs the installed code (`superd --can-resume FORMAT CONFIG`) as a
helper process: it must import, say it reads this state format, and load the
running config's bytes (given on its stdin) without an error.  In the loop
the check is watched, never waited for; after a crash, with the loop beyond
use, it is waited for.  The exec itself blocks the signals superd handles,
so that one arriving during the switch waits for the new image instead of
killing the daemon with its default action; the mask survives the exec and
the new image unblocks them once its handlers are in place.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

from . import jsoncodec
from .config import Config
from .exits import describe_wait_status
from .handover import bytes_in_memfd, check_argv, encode_bytes, kept_fds, resume_argv, write_state
from .loop import Loop, Timer

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any

CHECK_TIMEOUT = 30.0  # for the new image to import and answer (a loaded machine is slow)
MAX_ANSWER = 4096
HANDOVER_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                              signal.SIGUSR1, signal.SIGUSR2})
CRASH_WINDOW = 60.0
MAX_CRASHES = 3  # re-execs after crashes within CRASH_WINDOW; one more and superd stops

# The check's verdict: None when the new image can take over, else why not.
Verdict = Callable[["str | None"], None]
Watch = Callable[[int, Callable[[int], None]], None]


def start_check(config: Config) -> tuple[int, int]:
    """Spawn the check of the installed superd, with the running config's files
    (a JSON object of path to bytes as latin-1 text) on its stdin; (pid, read
    end of its output)."""
    sources = {path: encode_bytes(data) for path, data in config.sources.items()}
    config_fd = bytes_in_memfd(jsoncodec.dumps(sources).encode(), "superd-config")
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        os.set_blocking(read_end, False)
        argv = check_argv(config.path)
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=[
            (os.POSIX_SPAWN_DUP2, config_fd, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_DUP2, write_end, 2),
        ], setsigmask=(), setsigdef=tuple(HANDOVER_SIGNALS | {signal.SIGPIPE}))
    except OSError:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
        os.close(config_fd)
    return pid, read_end


def verdict(wait_status: int, answer: bytes) -> str | None:
    """None if the check said yes, else the reason in one line."""
    if os.waitstatus_to_exitcode(wait_status) == 0:
        return None
    # The last line says it: the refusal, or the exception of a traceback.
    lines = [line.strip() for line in answer.decode(errors="replace").splitlines()]
    detail = next((line[:300] for line in reversed(lines) if line), "") \
        or describe_wait_status(wait_status)
    return f"the installed superd ({sys.executable} -m superd) cannot take over: {detail}"


def read_answer(read_end: int) -> bytes:
    try:
        return os.read(read_end, MAX_ANSWER)
    except OSError:
        return b""
    finally:
        os.close(read_end)


class ImageCheck:
    """The check, run from the loop: on_verdict is called once, when the
    helper has been reaped (or given up on)."""

    def __init__(self, loop: Loop, watch: Watch, config: Config, on_verdict: Verdict) -> None:
        self.on_verdict = on_verdict
        self.done = False
        self.timer: Timer | None = None
        try:
            self.pid, self.read_end = start_check(config)
        except OSError as exc:
            self._finish(f"cannot run the installed superd: {exc.strerror or exc}")
            return
        watch(self.pid, self._exited)
        self.timer = loop.call_later(CHECK_TIMEOUT, self._overdue)

    def _exited(self, wait_status: int) -> None:
        answer = read_answer(self.read_end)
        if self.timer is not None:
            self.timer.cancel()
        self._finish(verdict(wait_status, answer))

    def _overdue(self) -> None:
        self.timer = None
        try:
            os.kill(self.pid, signal.SIGKILL)  # reaped as any helper; its verdict is this one
        except ProcessLookupError:
            pass
        self._finish(f"the installed superd did not answer within {CHECK_TIMEOUT:g}s")

    def _finish(self, reason: str | None) -> None:
        if not self.done:
            self.done = True
            self.on_verdict(reason)


def check_now(config: Config, timeout: float = CHECK_TIMEOUT) -> str | None:
    """The check, waited for (the loop has failed: nothing else can run)."""
    try:
        pid, read_end = start_check(config)
    except OSError as exc:
        return f"cannot run the installed superd: {exc.strerror or exc}"
    deadline = time.monotonic() + timeout
    while True:
        # This pid only: the workers' exits stay for the next image to reap.
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return verdict(status, read_answer(read_end))
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            read_answer(read_end)
            return f"the installed superd did not answer within {timeout:g}s"
        time.sleep(0.02)


def exec_image(state: dict[str, Any]) -> str:
    """Exec the installed superd with the state; returns only if the exec
    failed (with why), everything as it was."""
    try:
        state_fd = write_state(state)
    except OSError as exc:
        return f"cannot write the state: {exc.strerror or exc}"
    kept = kept_fds(state)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDOVER_SIGNALS)
    try:
        for fd in kept:
            os.set_inheritable(fd, True)
        argv = resume_argv(state_fd)
        os.execv(argv[0], argv)
    except OSError as exc:
        reason = f"cannot exec {sys.executable}: {exc.strerror or exc}"
    for fd in kept:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass
    os.close(state_fd)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return reason


def unblock_signals() -> None:
    """In the new image, once its handlers are installed: what arrived during
    the switch is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDOVER_SIGNALS)


class CrashCount:
    """Crashes answered by a re-exec, over the lives of every image."""

    def __init__(self, times: list[float] | None = None) -> None:
        self.times = list(times or [])

    def allows_another(self) -> bool:
        """Record a crash now; False when it is one more than MAX_CRASHES in
        CRASH_WINDOW, and superd must stop instead."""
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < CRASH_WINDOW]
        if len(self.times) >= MAX_CRASHES:
            return False
        self.times.append(now)
        return True
