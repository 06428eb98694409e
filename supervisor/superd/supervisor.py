"""The workers as a whole: spawning, reaping, routing deaths, waiting on
states, and shutdown.  Runs entirely inside the loop and never blocks.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config, WorkerConfig
from .deps import dependents, start_order
from .events import log_error_event
from .listen import Listeners
from .logs import Logs
from .loop import Loop, Timer
from .readiness import NotifyServer, TcpProbe, notify_socket_path
from .reload import Plan, instance_configs
from .resources import ResourceSampler
from .spawn import SpawnSpec, spawn
from .states import ACTIVE, Event, State
from .worker import Instance

log = logging.getLogger("superd")

Listener = Callable[[dict[str, Any]], None]


class UnknownName(Exception):
    pass


@dataclass
class Waiter:
    """Calls back once every instance satisfies `done`."""

    instances: list[Instance]
    done: Callable[[Instance], bool]
    callback: Callable[[], None]

    def settled(self) -> bool:
        return all(self.done(instance) for instance in self.instances)


def start_settled(instance: Instance) -> bool:
    if instance.state in (State.RUNNING, State.FATAL):
        return True
    pending = instance.start_after_stop or instance.waiting_for_deps
    return instance.state in (State.STOPPED, State.EXITED) and not pending


def stop_settled(instance: Instance) -> bool:
    return instance.state in (State.STOPPED, State.EXITED, State.FATAL)


class Supervisor:
    def __init__(self, config: Config, loop: Loop) -> None:
        self.config = config
        self.loop = loop
        self.instances: dict[str, Instance] = {}
        self.by_pid: dict[int, Instance] = {}
        self.listeners: list[Listener] = []
        self.waiters: list[Waiter] = []
        self.sockets = Listeners()
        self.notify_server: NotifyServer | None = None
        self.logs = Logs(config, loop)
        self.retiring: set[Instance] = set()  # removed by a reload, still stopping
        self.resources = ResourceSampler()
        for name, worker in instance_configs(config).items():
            self.instances[name] = Instance(worker, _index(name), self)

    # -- Runtime, as seen by Instance -------------------------------------
    def spawn(self, instance: Instance) -> int:
        worker = instance.config
        try:
            stdout, stderr = self.logs.pipes_for(instance.name, worker.stdout, worker.stderr)
        except OSError as exc:
            log.error("%s: cannot create output pipes: %s", instance.name, exc)
            raise
        spec = SpawnSpec(argv=worker.command, env=self._environment(instance),
                         directory=worker.directory, umask=worker.umask, user=worker.user,
                         stdout_fd=stdout, stderr_fd=stderr,
                         listen_fds=self.sockets.fds(worker.sockets),
                         listen_names=worker.sockets)
        instance.status_text = ""
        try:
            pid = spawn(spec)
        except OSError as exc:
            log.error("%s: cannot fork: %s", instance.name, exc)
            raise
        finally:
            for write_end in {stdout, stderr}:
                os.close(write_end)
        self.by_pid[pid] = instance
        log.info("%s: spawned pid %d: %s", instance.name, pid, " ".join(instance.config.command))
        return pid

    def killpg(self, pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            # Between fork and the child's setsid() there is no group yet.
            try:
                os.kill(pgid, signum)
            except ProcessLookupError:
                pass
        except PermissionError as exc:
            log.error("cannot signal group %d: %s", pgid, exc)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_later(delay, callback)

    def transition(self, instance: Instance, old: State, new: State) -> None:
        log.info("%s: %s -> %s%s", instance.name, old.value, new.value, _detail(instance, new))
        event = {"event": "state", "name": instance.name, "from": old.value,
                 "to": new.value, "pid": instance.pid, "time": time.time()}
        if new in (State.EXITED, State.BACKOFF, State.FATAL, State.STOPPED):
            event["exit_status"] = instance.exit_status
        self.publish(event)
        if new is State.STARTING and instance.config.ready.kind == "tcp":
            assert instance.config.ready.port is not None
            TcpProbe(self.loop, instance, instance.config.ready.port)
        self._wake_waiters()

    def report_log_error(self, name: str | None, path: str, message: str) -> None:
        """For the log writers: a worker's (name) or the daemon's (None) log failed."""
        self.publish(log_error_event(name, path, message))

    def publish(self, event: dict[str, Any]) -> None:
        """Hand an event (see events.py for the kinds) to every listener."""
        for listener in list(self.listeners):
            listener(event)

    # -- reaping ----------------------------------------------------------
    def reap(self) -> None:
        """Collect every child that has exited; route each to its instance."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            instance = self.by_pid.pop(pid, None)
            if instance is None or instance.pid != pid:
                log.info("reaped pid %d (%s), not a worker", pid, _describe(status))
                continue
            log.info("%s: pid %d %s", instance.name, pid, _describe(status))
            self.logs.exited(instance.name)
            instance.died(status)
            self.retiring.discard(instance)

    # -- operations -------------------------------------------------------
    def resolve(self, names: list[str]) -> list[Instance]:
        """Expand `all`, worker names and instance names; keep order, no repeats."""
        found: dict[str, Instance] = {}
        for name in names or ["all"]:
            matches = self._match(name)
            if not matches:
                raise UnknownName(f"no such worker: {name}")
            found.update((instance.name, instance) for instance in matches)
        return list(found.values())

    def _match(self, name: str) -> list[Instance]:
        if name == "all":
            return list(self.instances.values())
        if name in self.instances:
            return [self.instances[name]]
        return [i for i in self.instances.values() if i.config.name == name]

    def wait(self, instances: list[Instance], done: Callable[[Instance], bool],
             callback: Callable[[], None]) -> None:
        waiter = Waiter(instances, done, callback)
        if waiter.settled():
            callback()
        else:
            self.waiters.append(waiter)

    def _wake_waiters(self) -> None:
        settled = [waiter for waiter in self.waiters if waiter.settled()]
        for waiter in settled:
            # A callback may change states and so settle waiters itself.
            if waiter in self.waiters:
                self.waiters.remove(waiter)
                waiter.callback()

    def autostart(self) -> None:
        for instance in self.in_start_order(list(self.instances.values())):
            if instance.config.autostart:
                self.start(instance)

    # -- sockets and readiness --------------------------------------------
    def open_sockets(self) -> None:
        """Bind the `sockets:` section and the notify socket (ListenError if not)."""
        self.sockets.bind_all(self.config.sockets)
        address = notify_socket_path(self.config.daemon.socket)
        self.notify_server = NotifyServer(self.loop, address, self.find_notifier)

    def close_sockets(self) -> None:
        if self.notify_server is not None:
            self.notify_server.close()
            self.notify_server = None
        self.sockets.close()

    def find_notifier(self, pid: int) -> Instance | None:
        """The instance whose main process is `pid` or leads `pid`'s group."""
        instance = self.by_pid.get(pid)
        if instance is None:
            try:
                instance = self.by_pid.get(os.getpgid(pid))
            except OSError:
                return None
        if instance is None or instance.pid is None:
            return None
        return instance

    def _environment(self, instance: Instance) -> dict[str, str]:
        env = spawn_environment(instance)
        # superd's own NOTIFY_SOCKET (from systemd) is never a worker's.
        env.pop("NOTIFY_SOCKET", None)
        if instance.config.ready.kind == "notify" and self.notify_server is not None:
            env["NOTIFY_SOCKET"] = self.notify_server.address
        return env

    # -- dependencies -----------------------------------------------------
    def _depends_on(self) -> dict[str, tuple[str, ...]]:
        return {name: worker.depends_on for name, worker in self.config.workers.items()}

    def in_start_order(self, instances: list[Instance]) -> list[Instance]:
        rank = {name: index for index, name in enumerate(start_order(self._depends_on()))}
        return sorted(instances, key=lambda instance: rank[instance.config.name])

    def start(self, instance: Instance) -> None:
        """START once every dependency is RUNNING, starting them first if needed."""
        needed = [dep for name in instance.config.depends_on for dep in self._match(name)]
        for dependency in needed:
            if dependency.state not in ACTIVE:
                self.start(dependency)
        if all(dependency.state is State.RUNNING for dependency in needed):
            instance.handle(Event.START)
            return
        if instance.waiting_for_deps:
            return
        instance.waiting_for_deps = True
        self.wait(needed, start_settled, lambda: self._dependencies_settled(instance, needed))

    def _dependencies_settled(self, instance: Instance, needed: list[Instance]) -> None:
        if not instance.waiting_for_deps:
            return  # stopped while it waited
        instance.waiting_for_deps = False
        failed = [dep.name for dep in needed if dep.state is not State.RUNNING]
        if failed:
            log.error("%s: not started: dependency %s is not running", instance.name,
                      ", ".join(failed))
            self._wake_waiters()
            return
        instance.handle(Event.START)

    def stop_in_order(self, instances: list[Instance], callback: Callable[[], None]) -> None:
        """Stop dependents before what they depend on; call back when all stopped."""
        depends_on = self._depends_on()
        for instance in instances:
            instance.waiting_for_deps = False
        for instance in instances:
            first = set(dependents(depends_on, instance.config.name))
            blockers = [other for other in instances if other.config.name in first]
            self.wait(blockers, stop_settled, _stopper(instance))
        self.wait(instances, stop_settled, callback)

    def kill_everything(self) -> None:
        for instance in [*self.instances.values(), *self.retiring]:
            if instance.pid is not None:
                self.killpg(instance.pid, signal.SIGKILL)

    # -- status -----------------------------------------------------------
    def status_rows(self, instances: list[Instance]) -> list[dict[str, Any]]:
        rows = [status_row(instance) for instance in instances]
        running = {i.name: i.pid for i in instances if i.pid is not None}
        figures = self.resources.measure(running)
        self.resources.prune({i.name for i in self.instances.values() if i.pid is not None})
        for row in rows:
            row["cpu_percent"], row["rss_bytes"] = figures.get(row["name"], (None, None))
            row["log_dropped_bytes"] = self.logs.dropped(row["name"])
        return rows

    # -- reload -----------------------------------------------------------
    def apply(self, plan: Plan, callback: Callable[[], None]) -> None:
        """Run plan.config: stop removed, restart changed, start added instances;
        call back once each has settled.  Unchanged instances are not touched."""
        old_instances, self.config = self.instances, plan.config
        self.logs.config = plan.config  # new log_dir applies to the next spawns
        targets: dict[Instance, Callable[[Instance], bool]] = {}
        self.instances = {}
        for name, worker in instance_configs(plan.config).items():
            instance = old_instances.get(name)
            if instance is None:
                instance = Instance(worker, _index(name), self)
            self.instances[name] = instance
            if name in plan.changed or name in plan.added:
                targets[instance] = self._reconfigure(instance, worker)
            else:
                instance.config = worker  # equal but for numprocs
        for name in plan.removed:
            instance = old_instances[name]
            instance.handle(Event.STOP)
            if instance.pid is not None:
                self.retiring.add(instance)
            targets[instance] = stop_settled
        self.wait(list(targets), lambda instance: targets[instance](instance), callback)

    def _reconfigure(self, instance: Instance,
                     worker: WorkerConfig) -> Callable[[Instance], bool]:
        was_active = instance.state in ACTIVE or instance.start_after_stop
        instance.handle(Event.STOP)  # with the settings it was started with
        instance.config = worker
        if was_active or worker.autostart:
            instance.handle(Event.START)
            return start_settled
        return stop_settled


def _index(name: str) -> int:
    return int(name.rpartition(":")[2]) if ":" in name else 0


def _stopper(instance: Instance) -> Callable[[], None]:
    return lambda: instance.handle(Event.STOP)


def status_row(instance: Instance) -> dict[str, Any]:
    uptime = instance.uptime()
    return {
        "name": instance.name,
        "worker": instance.config.name,
        "state": instance.state.value,
        "pid": instance.pid,
        "uptime": None if uptime is None else round(uptime, 3),
        "restarts": instance.restarts,
        "exit_status": instance.exit_status,
        "cpu_percent": None,
        "rss_bytes": None,
        "description": describe_exit(instance.exit_status) if instance.pid is None else "",
        "status_text": instance.status_text,
    }


def describe_exit(exit_status: int | None) -> str:
    if exit_status is None:
        return ""
    if exit_status < 0:
        try:
            return f"killed by {signal.Signals(-exit_status).name}"
        except ValueError:
            return f"killed by signal {-exit_status}"
    return f"exit {exit_status}"


def _describe(wait_status: int) -> str:
    return describe_exit(os.waitstatus_to_exitcode(wait_status)).replace("exit", "exited", 1)


def _detail(instance: Instance, new: State) -> str:
    if new in (State.STARTING, State.RUNNING) and instance.pid is not None:
        return f" (pid {instance.pid})"
    if new in (State.EXITED, State.BACKOFF, State.FATAL):
        return f" ({describe_exit(instance.exit_status)})"
    return ""


def spawn_environment(instance: Instance) -> dict[str, str]:
    env = dict(os.environ)
    if instance.config.user is not None:
        env.update(user_environment(instance.config.user))
    env.update(instance.config.environment)
    env["SUPERD_NAME"] = instance.name
    env["SUPERD_INSTANCE"] = str(instance.index)
    return env


def user_environment(user: str) -> dict[str, str]:
    """What a login as `user` would set, so a worker does not inherit root's HOME."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}

