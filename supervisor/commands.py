"""The control commands: one method each, named cmd_<command>.

Each takes the request's args and a Reply, and answers now or later; none
of them blocks.  A command that waits (start, stop, restart, shutdown)
registers a waiter and replies when the workers reach their target state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .config import parse_signal
from .control import Reply
from .events import Subscribers
from .reload import ReloadRefused
from .states import PROCESS_ALIVE, Event, State
from .supervisor import Supervisor, UnknownName, describe_exit, start_settled, stop_settled
from .worker import Instance


class BadArgs(Exception):
    pass


def result_row(instance: Instance, ok: bool, error: str | None = None) -> dict[str, Any]:
    return {"name": instance.name, "state": instance.state.value, "ok": ok, "error": error}


def outcome(instances: list[Instance], wanted: State) -> list[dict[str, Any]]:
    """Per instance: did it reach the state the command wanted?"""
    rows = []
    for instance in instances:
        ok = instance.state is wanted
        rows.append(result_row(instance, ok, None if ok else describe_failure(instance)))
    return rows


def describe_failure(instance: Instance) -> str:
    return describe_exit(instance.exit_status) or f"ended {instance.state.value}"


class Commands:
    def __init__(self, supervisor: Supervisor, shutdown: Callable[[Callable[[], None]], None],
                 is_shutting_down: Callable[[], bool]) -> None:
        self.supervisor = supervisor
        self.shutdown = shutdown
        self.is_shutting_down = is_shutting_down
        self.started_at = time.monotonic()
        # Set by the daemon: re-read the config and call back with the result.
        self.reloader: Callable[[Callable[[Any], None]], None] | None = None
        self.subscribers = Subscribers()
        supervisor.listeners.append(self.subscribers)

    def dispatch(self, cmd: str, args: dict[str, Any], reply: Reply) -> None:
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            reply.error("unknown_command", f"unknown command: {cmd}")
            return
        try:
            handler(args, reply)
        except BadArgs as exc:
            reply.error("bad_args", str(exc))
        except UnknownName as exc:
            reply.error("no_such_worker", str(exc))

    # -- helpers ----------------------------------------------------------
    def _instances(self, args: dict[str, Any]) -> list[Instance]:
        names = args.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadArgs("'names' must be a list of strings")
        return self.supervisor.resolve(names)

    def _refuse_during_shutdown(self, reply: Reply) -> bool:
        if self.is_shutting_down():
            reply.error("shutting_down", "superd is shutting down")
            return True
        return False

    # -- commands ---------------------------------------------------------
    def cmd_ping(self, args: dict[str, Any], reply: Reply) -> None:
        """Daemon version, pid and uptime in seconds."""
        reply.ok({"version": __version__, "pid": os.getpid(),
                  "uptime": round(time.monotonic() - self.started_at, 3)})

    def cmd_status(self, args: dict[str, Any], reply: Reply) -> None:
        """One row per named instance (all when none are named)."""
        reply.ok(self.supervisor.status_rows(self._instances(args)))

    def cmd_start(self, args: dict[str, Any], reply: Reply) -> None:
        """Start instances; with wait (default) reply once RUNNING or FATAL."""
        instances, wait = self._instances(args), _wait_flag(args)
        if self._refuse_during_shutdown(reply):
            return
        for instance in instances:
            instance.handle(Event.START)
        self._reply_when_started(instances, wait, reply)

    def cmd_stop(self, args: dict[str, Any], reply: Reply) -> None:
        """Stop instances; reply once every one is STOPPED."""
        instances = self._instances(args)
        for instance in instances:
            instance.handle(Event.STOP)
        self.supervisor.wait(instances, stop_settled,
                             lambda: reply.ok(outcome(instances, State.STOPPED)))

    def cmd_restart(self, args: dict[str, Any], reply: Reply) -> None:
        """Stop (if running) then start instances; reply as start does."""
        instances, wait = self._instances(args), _wait_flag(args)
        if self._refuse_during_shutdown(reply):
            return
        for instance in instances:
            if instance.state in PROCESS_ALIVE:
                instance.handle(Event.STOP)
            instance.handle(Event.START)
        self._reply_when_started(instances, wait, reply)

    def cmd_signal(self, args: dict[str, Any], reply: Reply) -> None:
        """Send a signal to the process group of each running instance."""
        try:
            signum = parse_signal(args.get("signal"))
        except ValueError as exc:
            raise BadArgs(str(exc)) from None
        rows = []
        for instance in self._instances(args):
            if instance.pid is None:
                rows.append(result_row(instance, False, "not running"))
                continue
            self.supervisor.killpg(instance.pid, signum)
            rows.append(result_row(instance, True))
        reply.ok(rows)

    def cmd_shutdown(self, args: dict[str, Any], reply: Reply) -> None:
        """Stop every worker, reply, then the daemon exits."""
        self.shutdown(lambda: reply.ok({}))

    def cmd_reload(self, args: dict[str, Any], reply: Reply) -> None:
        """Re-read the config; apply what changed; reply with the diff applied."""
        if self.reloader is None:
            reply.error("unsupported", "reload is not available")
            return
        try:
            self.reloader(reply.ok)
        except ReloadRefused as exc:
            reply.error(exc.code, exc.message)

    def cmd_subscribe(self, args: dict[str, Any], reply: Reply) -> None:
        """Reply, then push every event (kind 3) on this connection until it closes."""
        reply.ok({})
        self.subscribers.add(reply.connection)

    # -- shared -----------------------------------------------------------
    def _reply_when_started(self, instances: list[Instance], wait: bool, reply: Reply) -> None:
        if not wait:
            reply.ok([result_row(i, i.state is not State.FATAL) for i in instances])
            return
        self.supervisor.wait(instances, start_settled,
                             lambda: reply.ok(outcome(instances, State.RUNNING)))


def _wait_flag(args: dict[str, Any]) -> bool:
    wait = args.get("wait", True)
    if not isinstance(wait, bool):
        raise BadArgs("'wait' must be true or false")
    return wait
