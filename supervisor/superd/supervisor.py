"""The workers as a whole: wires the pieces that run them, and is the
Runtime through which each Instance acts (spawn, signal, timers, transitions).

Who owns what: the registry holds the instances and reaps; the orchestrator
starts and stops them in dependency order; rolls restarts them one at a
time; the launcher builds and forks a worker; logs owns its output; the
reconfigurer applies a reload; the status report builds `status` rows and
the metrics report the Prometheus text; the health checks and the memory
guard watch RUNNING instances; the bus carries events.  Runs entirely
inside the loop and never blocks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from .apply import Reconfigurer
from .config import WorkerConfig
from .events import EventBus, health_event, log_error_event, state_event
from .exits import describe_exit
from .handover import decode_bytes, encode_bytes
from .health import HealthChecks, ProbeMaker
from .launcher import Launched, Launcher, signal_group
from .listen import Listeners
from .logs import Logs
from .loop import Loop, Timer
from .memory import MemoryGuard, ProcGroupRss
from .metrics import MetricsReport
from .names import instance_index
from .orchestrator import Orchestrator
from .readiness import NotifyServer, TcpProbe, notify_socket_path
from .registry import Registry
from .reload import Plan, instance_configs
from .rolling import Rolls
from .running import RunningConfig
from .states import State
from .status import StatusReport, worker_sampler
from .waiters import Waiters
from .worker import Instance

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("superd")


class Supervisor:
    def __init__(self, running: RunningConfig, loop: Loop,
                 daemon_log: str | None = None, launched: Launched | None = None) -> None:
        self.running = running
        self.loop = loop
        self.bus = EventBus()
        self.registry = Registry(lambda: running.config.groups)
        self.waiters = Waiters()
        self.orchestrator = Orchestrator(running, self.registry, self.waiters)
        self.rolls = Rolls(running, self.orchestrator)
        self.sockets = Listeners()
        self.notify_server: NotifyServer | None = None
        self.logs = Logs(running, loop, self._log_failed, daemon_log)
        self.launcher = Launcher(self.logs, self.sockets, self._notify_address,
                                 launched or Launched())
        resources = worker_sampler(self.registry)  # one, so CPU% spans the same readings
        self.status = StatusReport(self.registry, self.logs, resources)
        self.metrics = MetricsReport(self.registry, self.logs, resources)
        self.memory = MemoryGuard(loop.call_later, ProcGroupRss(self._is_worker),
                                  self.bus.publish)
        self.health = HealthChecks(loop, ProbeMaker(loop, self.launcher, self.registry.watch),
                                   self._health_changed)
        self.reconfigurer = Reconfigurer(running, self.registry, self.orchestrator,
                                         self.rolls, self.new_instance)
        self.registry.replace(self.new_instance(worker, instance_index(name))
                              for name, worker in instance_configs(running.config).items())

    def new_instance(self, worker: WorkerConfig, index: int) -> Instance:
        return Instance(worker, index, self)

    def _is_worker(self, pid: int) -> bool:
        return self.registry.by_pid(pid) is not None

    def apply(self, plan: Plan, callback: Callable[[], None]) -> None:
        """Carry out a reload; call back once every touched instance has settled."""
        self.reconfigurer.apply(plan, callback)
        # An instance whose settings changed without a move of state (numprocs
        # alone) is looked at again for its max_memory.
        self.memory.review(self.registry.instances())

    # -- Runtime, as seen by Instance -------------------------------------
    def spawn(self, instance: Instance) -> int:
        pid = self.launcher.launch(instance)
        self.registry.track(pid, instance)
        return pid

    def killpg(self, pgid: int, signum: int) -> None:
        signal_group(pgid, signum)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_later(delay, callback)

    def transition(self, instance: Instance, old: State, new: State) -> None:
        _log_transition(instance, old, new)
        self.bus.publish(state_event(instance.name, old.value, new.value, instance.pid,
                                     instance.exit_status))
        ready = instance.config.ready
        if new is State.STARTING and ready.kind == "tcp" and ready.port is not None:
            TcpProbe(self.loop, instance, ready.port)
        if new is State.RUNNING:
            self.health.running(instance)
        elif old is State.RUNNING:
            self.health.not_running(instance)
        self.memory.update(instance)
        self.waiters.wake(instance)

    def _health_changed(self, instance: Instance, old: str | None, new: str,
                        message: str) -> None:
        log.info("%s: health %s -> %s (%s)", instance.name, old, new, message)
        self.bus.publish(health_event(instance.name, old, new, instance.pid, message))
        self.waiters.wake(instance)  # `serving` may have changed

    # -- reaping ----------------------------------------------------------
    def reap(self) -> None:
        self.registry.reap(self._died)

    def _died(self, instance: Instance, wait_status: int) -> None:
        self.logs.exited(instance.name)  # the log is complete before the exit is told
        instance.died(wait_status)

    def _log_failed(self, name: str, path: str, message: str) -> None:
        self.bus.publish(log_error_event(name, path, message))

    # -- sockets and readiness --------------------------------------------
    def open_sockets(self) -> None:
        """Bind the `sockets:` section and the notify socket (ListenError if not)."""
        self.sockets.bind_all(self.running.config.sockets)
        address = notify_socket_path(self.running.daemon.socket)
        self.notify_server = NotifyServer(self.loop, address, self.registry.find_notifier)

    def _notify_address(self) -> str | None:
        return None if self.notify_server is None else self.notify_server.address

    def close_sockets(self) -> None:
        if self.notify_server is not None:
            self.notify_server.close()
            self.notify_server = None
        self.sockets.close()

    # -- hand-over to a new image (a re-exec) ---------------------------------
    def handover(self) -> dict[str, Any]:
        """Everything about the workers a new image needs to go on with them."""
        notify = self.notify_server
        return {"instances": [i.snapshot() for i in self.registry.everything()],
                "logs": {name: [[fd, stream, encode_bytes(pending)]
                                for fd, stream, pending in pipes]
                         for name, pipes in self.logs.pipes().items()},
                "console": {stream: encode_bytes(data)
                            for stream, data in self.logs.console_output().items()},
                "orchestrator": self.orchestrator.pending(),
                "memory": self.memory.snapshot(),
                "health": self.health.handover(),
                "sockets": self.sockets.fds_by_name(),
                "notify": None if notify is None else notify.sock.fileno()}

    def take_over(self, saved: dict[str, Any]) -> None:
        """Go on with the workers as the image before left them: no transition,
        no signal, timers resumed for the time they had left."""
        self.sockets.adopt(self.running.config.sockets, saved["sockets"])
        address = notify_socket_path(self.running.daemon.socket)
        bound = None if saved["notify"] is None else socket.socket(fileno=saved["notify"])
        self.notify_server = NotifyServer(self.loop, address, self.registry.find_notifier, bound)
        for snapshot in saved["instances"]:
            self._take_over_instance(snapshot)
        self.memory.review(self.registry.instances())  # resume() moves no state: no hook ran
        self.memory.resume(saved.get("memory", {}))  # absent from an image without it
        for name, pipes in saved["logs"].items():
            instance = self.registry.get(name)
            if instance is None:
                for pipe in pipes:
                    os.close(pipe[0])  # the output of a worker a reload removed
                continue
            stdout, stderr = self.launcher.log_settings(instance)
            self.logs.adopt(name, stdout, stderr,
                            [(int(fd), str(stream), decode_bytes(pending))
                             for fd, stream, pending in pipes])
        self.logs.queue_console_output({stream: decode_bytes(data)
                                        for stream, data in saved["console"].items()})
        self.orchestrator.resume(saved["orchestrator"])
        self.health.take_over(saved.get("health", {}), self.registry.instances(),
                              lambda pid: self.registry.watch(pid, _ignore_exit))

    def _take_over_instance(self, snapshot: dict[str, Any]) -> None:
        instance = self.registry.get(snapshot["name"])
        if instance is None:
            # Removed by a reload that the crash cut short: it was on its way out.
            pid = snapshot["pid"]
            if pid is not None:
                log.warning("%s: removed by the last reload; killing pid %d", snapshot["name"],
                            pid)
                signal_group(pid, signal.SIGKILL)
            return
        instance.resume(snapshot)
        if instance.pid is not None:
            self.registry.track(instance.pid, instance)
        ready = instance.config.ready
        if instance.state is State.STARTING and ready.kind == "tcp" and ready.port is not None:
            TcpProbe(self.loop, instance, ready.port)

    def kill_everything(self) -> None:
        for instance in self.registry.everything():
            if instance.pid is not None:
                signal_group(instance.pid, signal.SIGKILL)

    def terminate_everything(self, timeout: float) -> None:
        """Without the loop (it has failed): stopsignal to every worker's group,
        up to timeout for them to go, then SIGKILL for the rest.

        This blocks and polls, which the loop never may; it runs only once the
        loop is beyond use and the daemon is on its way out.
        """
        alive = {pid: i for i in self.registry.everything() if (pid := i.pid) is not None}
        for pid, instance in alive.items():
            signal_group(pid, instance.config.stopsignal)
        self._reap_until(alive, time.monotonic() + timeout)
        for pid in alive:
            signal_group(pid, signal.SIGKILL)
        self._reap_until(alive, time.monotonic() + 1.0)

    def _reap_until(self, alive: dict[int, Instance], deadline: float) -> None:
        def gone(instance: Instance, wait_status: int) -> None:
            alive.pop(instance.pid or 0, None)

        while True:
            self.registry.reap(gone)
            if not alive or time.monotonic() >= deadline:
                return
            time.sleep(0.05)


def _ignore_exit(wait_status: int) -> None:
    """An exec probe the image before ended, reaped: nothing more to do."""


def _log_transition(instance: Instance, old: State, new: State) -> None:
    # One line per transition says it all (a restart is three lines, which
    # matters when a thousand restart at once).  The pid is an argument of its
    # own, not part of a string: the daemon's log takes numbers as what varies
    # between repeats of one cause.
    if new is State.STARTING and instance.pid is not None:
        log.info("%s: %s -> %s (pid %d: %s)", instance.name, old.value, new.value,
                 instance.pid, " ".join(instance.config.command))
    elif new is State.RUNNING and instance.pid is not None:
        log.info("%s: %s -> %s (pid %d)", instance.name, old.value, new.value, instance.pid)
    else:
        log.info("%s: %s -> %s%s", instance.name, old.value, new.value,
                 _detail(instance, old, new))


def _detail(instance: Instance, old: State, new: State) -> str:
    if new is State.BACKOFF and instance.shortage is not None:
        return f" ({instance.shortage})"
    if new in (State.EXITED, State.BACKOFF, State.FATAL) or old is State.STOPPING:
        return f" ({describe_exit(instance.exit_status)})"
    return ""
