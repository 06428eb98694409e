"""One worker instance and its state machine.

Instance knows nothing about waitpid(-1), sockets or the loop: it acts
through a narrow Runtime (spawn, killpg, timers, transition reports), so its
transitions can be tested with a fake runtime and no real processes.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

from .config import WorkerConfig
from .names import instance_name
from .states import ACTIVE, ALLOWED, TRANSITIONS, Event, State

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, Protocol, TypeVar

    T = TypeVar("T")

    class TimerHandle(Protocol):
        def cancel(self) -> None: ...

    class Runtime(Protocol):
        def spawn(self, instance: Instance) -> int: ...
        def killpg(self, pgid: int, signum: int) -> None: ...
        def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...
        def transition(self, instance: Instance, old: State, new: State) -> None: ...


# A spawn that fails with one of these failed for lack of superd's own
# resources (pipe, fork), not because of the worker.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


def resource_shortage(exc: OSError) -> str | None:
    """The cause in words when exc means superd is short of a resource, else None."""
    if exc.errno not in RESOURCE_ERRNOS:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    return f"cannot start: {reason} ({errno.errorcode[exc.errno]}); retrying"


def random_unit() -> float:
    """A number in [0, 1) for the jitter: os.urandom, not the random module
    (its import and its generator's state cost the daemon half a megabyte)."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def backoff_delay(initial: float, cap: float, failures: int, unit: float) -> float:
    """Exponential in the number of failures, capped, with jitter in [d/2, d]
    (unit: a random number in [0, 1))."""
    delay = min(cap, initial * 2.0 ** max(0, failures - 1))
    return delay * (0.5 + 0.5 * unit)


class Instance:
    # A thousand instances: slots keep each one small.
    __slots__ = ("config", "index", "name", "runtime", "state", "pid", "started_at",
                 "exit_status", "restarts", "failures", "shortage", "shortages",
                 "start_after_stop", "_timer", "_timer_due", "status_text", "health")

    def __init__(self, config: WorkerConfig, index: int, runtime: Runtime) -> None:
        self.config = config
        self.index = index
        self.name = instance_name(config.name, index, config.numprocs)
        self.runtime = runtime
        self.state = State.STOPPED
        self.pid: int | None = None
        self.started_at: float | None = None  # monotonic time of the last spawn
        self.exit_status: int | None = None  # exit code, or -SIGNUM
        self.restarts = 0
        self.failures = 0  # failed starts in a row
        self.shortage: str | None = None  # why superd cannot spawn it, while that holds
        self.shortages = 0  # spawns in a row that failed for lack of resources
        self.start_after_stop = False
        self._timer: TimerHandle | None = None
        self._timer_due: tuple[Event, float] | None = None  # what the timer fires, and when
        self.status_text = ""  # the worker's last sd_notify STATUS=
        # None without a healthcheck; else starting, healthy or unhealthy (health.py)
        self.health: str | None = None if config.healthcheck is None else "starting"

    # -- the public face: events in --------------------------------------
    def handle(self, event: Event) -> None:
        getattr(self, "_" + TRANSITIONS[(self.state, event)])()

    def died(self, wait_status: int) -> None:
        """The main process was reaped: sweep its group, then decide."""
        pgid = self.pid
        self.pid = None
        self.exit_status = os.waitstatus_to_exitcode(wait_status)
        if pgid is not None:
            # Whatever the worker left in its group goes with it, so a restart
            # never finds a stray grandchild holding its port or files.
            self.runtime.killpg(pgid, signal.SIGKILL)
        self.handle(Event.DIED)

    def report_status(self, text: str) -> None:
        """The worker's own one-line status (sd_notify STATUS=)."""
        self.status_text = text

    def reconfigure(self, config: WorkerConfig) -> None:
        """Run with these settings from the next spawn on (a reload)."""
        if (config.healthcheck is None) != (self.config.healthcheck is None):
            self.health = None if config.healthcheck is None else "starting"
        self.config = config

    @property
    def start_pending(self) -> bool:
        """Stopping now, and asked to start again once stopped."""
        return self.start_after_stop

    @property
    def wants_to_run(self) -> bool:
        """Running or on its way there, by itself or after a stop."""
        return self.state in ACTIVE or self.start_after_stop

    @property
    def serving(self) -> bool:
        """RUNNING (ready), and healthy if it has a healthcheck."""
        return self.state is State.RUNNING and self.health in (None, "healthy")

    def set_health(self, health: str | None) -> None:
        """What its healthcheck says now (None: it has none)."""
        self.health = health

    def uptime(self) -> float | None:
        if self.pid is None or self.started_at is None:
            return None
        return time.monotonic() - self.started_at

    # -- hand-over to a new image of superd (a re-exec) ------------------
    def snapshot(self) -> dict[str, object]:
        """What the state machine holds, as JSON values.  Monotonic times stay
        valid across an exec of the same process: one boot, one clock."""
        due = self._timer_due
        return {"name": self.name, "state": self.state.value, "pid": self.pid,
                "started_at": self.started_at, "exit_status": self.exit_status,
                "restarts": self.restarts, "failures": self.failures,
                "shortage": self.shortage, "shortages": self.shortages,
                "start_after_stop": self.start_after_stop, "status_text": self.status_text,
                "health": self.health,
                "timer": None if due is None else [due[0].value, due[1]]}

    def resume(self, snapshot: dict[str, Any]) -> None:
        """Go on from a snapshot the image before took of this instance: the
        same state (no transition: nothing happened), its timer armed for the
        time it had left."""
        self.state = State(snapshot["state"])
        self.pid = _optional(int, snapshot["pid"])
        self.started_at = _optional(float, snapshot["started_at"])
        self.exit_status = _optional(int, snapshot["exit_status"])
        self.restarts, self.failures = int(snapshot["restarts"]), int(snapshot["failures"])
        self.shortage = _optional(str, snapshot["shortage"])
        self.shortages = int(snapshot["shortages"])
        self.start_after_stop = bool(snapshot["start_after_stop"])
        self.status_text = str(snapshot["status_text"])
        if "health" in snapshot:  # an image before healthchecks has none to give
            self.health = _optional(str, snapshot["health"])
        self._cancel_timer()
        if snapshot["timer"] is not None:
            event, at = snapshot["timer"]
            self._arm(max(0.0, float(at) - time.monotonic()), Event(event))

    # -- handlers named in states.TRANSITIONS ----------------------------
    def _ignore(self) -> None:
        pass

    def _spawn(self) -> None:
        self.failures = 0
        self.start_after_stop = False
        self._launch()

    def _respawn(self) -> None:
        if self.shortage is None:  # retries after a shortage are the same restart
            self.restarts += 1
        self._launch()

    def _mark_running(self) -> None:
        self._cancel_timer()
        self.failures = 0
        self._enter(State.RUNNING)

    def _start_failed(self) -> None:
        self._cancel_timer()
        self.failures += 1
        if self.failures > self.config.startretries:
            self._enter(State.FATAL)
            return
        backoff = self.config.backoff
        delay = backoff_delay(backoff.initial, backoff.max, self.failures, random_unit())
        self._enter(State.BACKOFF)
        self._arm(delay, Event.RETRY)

    def _start_timed_out(self) -> None:
        # No readiness report within start_timeout: end this try; the death that
        # follows is an ordinary failed start (BACKOFF, then FATAL).
        if self.pid is not None:
            self.runtime.killpg(self.pid, signal.SIGKILL)

    def _wait_for_resources(self) -> None:
        # Not the worker's failure: no try is counted toward startretries, and
        # the capped backoff repeats until superd has the resource again.
        self._cancel_timer()
        self.shortages += 1
        backoff = self.config.backoff
        delay = backoff_delay(backoff.initial, backoff.max, self.shortages, random_unit())
        self._arm(delay, Event.RETRY)
        if self.state is not State.BACKOFF:
            self._enter(State.BACKOFF)

    def _exited(self) -> None:
        self._enter(State.EXITED)
        if self._should_restart():
            self.restarts += 1
            self._launch()

    def _restart(self) -> None:
        # Counted as a restart, like an exit that autorestart answers.
        self.restarts += 1
        self.start_after_stop = True
        self._begin_stop()

    def _begin_stop(self) -> None:
        self._cancel_timer()
        self._enter(State.STOPPING)
        assert self.pid is not None
        self.runtime.killpg(self.pid, self.config.stopsignal)
        self._arm(self.config.stoptimeout, Event.KILL)

    def _kill_group(self) -> None:
        if self.pid is not None:
            self.runtime.killpg(self.pid, signal.SIGKILL)

    def _stopped(self) -> None:
        self._cancel_timer()
        self._enter(State.STOPPED)
        if self.start_after_stop:
            self._spawn()

    def _start_after_stop(self) -> None:
        self.start_after_stop = True

    def _cancel_retry(self) -> None:
        self._cancel_timer()
        self._clear_shortage()
        self._enter(State.STOPPED)

    def _forget_exit(self) -> None:
        self._enter(State.STOPPED)

    # -- mechanics -------------------------------------------------------
    def _launch(self) -> None:
        self.status_text = ""
        try:
            self.pid = self.runtime.spawn(self)
        except OSError as exc:
            self._spawn_failed(exc)
            return
        self._clear_shortage()
        self.started_at = time.monotonic()
        # The start timer is armed before STARTING is announced: a listener
        # may make the instance ready at once (a TCP probe that connects), and
        # a timer armed after that would outlive this try.
        self._arm_start_timer()
        self._enter(State.STARTING)
        if self.config.ready.kind == "none" and self.config.startsecs <= 0:
            self._mark_running()

    def _arm_start_timer(self) -> None:
        if self.config.ready.kind != "none":
            # Readiness alone decides; startsecs plays no part.
            if self.config.start_timeout > 0:
                self._arm(self.config.start_timeout, Event.TIMEOUT)
        elif self.config.startsecs > 0:
            self._arm(self.config.startsecs, Event.UP)

    def _arm(self, delay: float, event: Event) -> None:
        """One timer at a time: `event` in `delay` seconds."""
        def fire() -> None:
            self._timer, self._timer_due = None, None
            self.handle(event)

        self._timer = self.runtime.call_later(delay, fire)
        self._timer_due = (event, time.monotonic() + delay)

    def _spawn_failed(self, exc: OSError) -> None:
        self.pid = None
        self.shortage = resource_shortage(exc)
        if self.shortage is not None:
            self.handle(Event.NO_RESOURCES)
            return
        self._enter(State.STARTING)
        self._start_failed()

    def _clear_shortage(self) -> None:
        self.shortage = None
        self.shortages = 0

    def _should_restart(self) -> bool:
        policy = self.config.autorestart
        if policy == "always":
            return True
        if policy == "never":
            return False
        status = self.exit_status
        return status is None or status < 0 or status not in self.config.exitcodes

    def _enter(self, new: State) -> None:
        old = self.state
        if new not in ALLOWED[old]:
            raise AssertionError(f"{self.name}: illegal transition {old.value} -> {new.value}")
        self.state = new
        self.runtime.transition(self, old, new)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = None, None


def _optional(kind: Callable[[Any], T], value: object) -> T | None:
    return None if value is None else kind(value)
