"""Healthchecks of RUNNING instances: when each probe runs, and what the
results mean.

An instance that becomes RUNNING is `starting` until a probe succeeds; from
`start_period` after RUNNING a probe runs every `interval` (the first one
interval after start_period, each next one interval after the last one
ended, as Docker does), each given `timeout` to answer.  So an instance
that fails every probe is restarted at most once per interval, never in a
tight loop.  A success makes
it `healthy` and clears the count of failures; `retries` failures in a row
make it `unhealthy`, and it is restarted (Event.RESTART: the state machine
stops it, starts it again and counts the restart).  Each instance has one
timer at a time, at its next probe or at the running probe's deadline, so
the loop wakes only for these; a daemon without healthchecks has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import HealthConfig
from .expand import expand
from .loop import Loop, Timer
from .probes import Done, ExecCheck, HttpCheck, TcpCheck, WatchPid
from .states import Event, State
from .worker import Instance

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Probe(Protocol):
        def start(self) -> None: ...
        def cancel(self) -> None: ...

    class ProbeLauncher(Protocol):
        def environment(self, instance: Instance) -> dict[str, str]: ...
        def launch_probe(self, instance: Instance, env: dict[str, str]) -> tuple[int, int]: ...

log = logging.getLogger("superd")

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"

# (instance, old health, new health, what the last probe found)
HealthChange = Callable[[Instance, "str | None", str, str], None]


class Refused:
    """A probe that cannot be tried as written (a ${VAR} that expanded to no
    port): a failure, reported when started."""

    def __init__(self, message: str, done: Done) -> None:
        self.message, self.done = message, done

    def start(self) -> None:
        self.done(False, self.message)

    def cancel(self) -> None:
        pass


class ProbeMaker:
    """Builds an instance's next probe from its healthcheck, with its own
    ${VAR} values."""

    def __init__(self, loop: Loop, launcher: ProbeLauncher, watch: WatchPid) -> None:
        self.loop = loop
        self.launcher = launcher
        self.watch = watch

    def probe(self, instance: Instance, health: HealthConfig, done: Done) -> Probe:
        if health.kind == "exec":
            env = self.launcher.environment(instance)
            env.pop("NOTIFY_SOCKET", None)  # a probe is no worker: it has nothing to report
            return ExecCheck(self.loop, lambda: self.launcher.launch_probe(instance, env),
                             self.watch, done)
        target = health.target
        if "$" in target:
            target = expand(target, self.launcher.environment(instance))
        try:
            if health.kind == "http":
                return HttpCheck(self.loop, target, done)
            return TcpCheck(self.loop, "127.0.0.1", _port(target), done)
        except ValueError as exc:
            return Refused(str(exc), done)


class HealthWatch:
    """One RUNNING instance's probes and its count of failures in a row."""

    def __init__(self, loop: Loop, instance: Instance, maker: ProbeMaker,
                 changed: HealthChange, failures: int = 0) -> None:
        assert instance.config.healthcheck is not None
        self.loop = loop
        self.instance = instance
        self.config: HealthConfig = instance.config.healthcheck
        self.maker = maker
        self.changed = changed
        self.failures = failures
        self.probe: Probe | None = None
        self._timer: Timer | None = None

    def begin(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._run_probe)

    def begin_new_process(self) -> None:
        """The instance has just become RUNNING: no verdict on this process yet."""
        self._set(STARTING, "running; no probe yet")
        self.begin(self.config.start_period + self.config.interval)

    def stop(self) -> None:
        self._cancel_timer()
        self._cancel_probe()

    def interrupt(self) -> int | None:
        """End the probe under way, if any (its pid if it was a process), and
        try again after the interval."""
        pid = self.probe.running_pid if isinstance(self.probe, ExecCheck) else None
        if self.probe is not None:
            self._cancel_probe()
            self._cancel_timer()
            self.begin(self.config.interval)
        return pid

    def _run_probe(self) -> None:
        self._timer = self.loop.call_later(self.config.timeout, self._overran)
        self.probe = self.maker.probe(self.instance, self.config, self._result)
        self.probe.start()

    def _overran(self) -> None:
        self._timer = None
        self._result(False, f"no answer within {self.config.timeout:g}s")

    def _result(self, verdict: bool | None, message: str) -> None:
        self._cancel_probe()
        self._cancel_timer()
        self.begin(self.config.interval)  # before the verdict: a restart stops it again
        if verdict is None:
            log.warning("%s: healthcheck not run: %s", self.instance.name, message)
        elif verdict:
            self.failures = 0
            self._set(HEALTHY, message)
        else:
            self._failed(message)

    def _failed(self, message: str) -> None:
        self.failures += 1
        retries = self.config.retries
        if self.failures < retries:
            log.warning("%s: healthcheck failed (%d of %d): %s", self.instance.name,
                        self.failures, retries, message)
            return
        log.error("%s: unhealthy after %d failed healthchecks in a row (%s); restarting",
                  self.instance.name, self.failures, message)
        self._set(UNHEALTHY, message)
        self.instance.handle(Event.RESTART)

    def _set(self, health: str, message: str) -> None:
        old = self.instance.health
        if old != health:
            self.instance.set_health(health)
            self.changed(self.instance, old, health, message)

    def _cancel_probe(self) -> None:
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.cancel()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HealthChecks:
    """The watches of every RUNNING instance that has a healthcheck."""

    def __init__(self, loop: Loop, maker: ProbeMaker, changed: HealthChange) -> None:
        self.loop = loop
        self.maker = maker
        self.changed = changed
        self._watches: dict[Instance, HealthWatch] = {}

    def running(self, instance: Instance, failures: int = 0,
                first_probe_in: float | None = None) -> None:
        """instance is RUNNING: watch it, if it has a healthcheck."""
        health = instance.config.healthcheck
        if health is None:
            return
        self.not_running(instance)
        watch = HealthWatch(self.loop, instance, self.maker, self.changed, failures)
        self._watches[instance] = watch
        if first_probe_in is None:
            watch.begin_new_process()
        else:
            watch.begin(first_probe_in)

    def not_running(self, instance: Instance) -> None:
        watch = self._watches.pop(instance, None)
        if watch is not None:
            watch.stop()

    def stop_all(self) -> None:
        for watch in self._watches.values():
            watch.stop()
        self._watches.clear()

    # -- hand-over to a new image (a re-exec) -----------------------------
    def handover(self) -> dict[str, Any]:
        """The failures counted so far, by instance; probes under way are
        ended (to be tried again after the interval if the exec fails), and
        the pids of those that were processes are named for the new image
        to reap."""
        pids = [pid for watch in self._watches.values() if (pid := watch.interrupt())]
        return {"failures": {watch.instance.name: watch.failures
                             for watch in self._watches.values()},
                "probe_pids": pids}

    def take_over(self, saved: dict[str, Any], instances: list[Instance],
                  reap_quietly: Callable[[int], None]) -> None:
        """Watch the RUNNING instances again, each with the failures it had,
        its next probe an interval away."""
        for pid in saved.get("probe_pids", []):
            reap_quietly(int(pid))
        failures = saved.get("failures", {})
        for instance in instances:
            health = instance.config.healthcheck
            if health is not None and instance.state is State.RUNNING:
                self.running(instance, int(failures.get(instance.name, 0)), health.interval)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"healthcheck port is not a TCP port: {text!r}")
    return int(text)
