"""The control commands: one method each, named cmd_<command>.

Each takes the request's args and a Reply, and answers now or later; none
of them blocks.  A command that waits (start, stop, restart, shutdown)
registers a waiter and replies when the workers reach their target state.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable

from . import __version__
from .config import parse_signal
from .control import Connection, Reply
from .events import Subscribers
from .exits import describe_exit
from .launcher import signal_group
from .logfile import Follow, LogFile, merged_tail
from .protocol import Kind
from .registry import UnknownName
from .reload import ReloadRefused
from .rolling import Outcome, RollBusy
from .states import State
from .supervisor import Supervisor
from .worker import Instance

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, Protocol

    from .status import Row

FOLLOW_LIMIT = 1 << 20  # a follower this far behind is cut off
MAX_LINES = 100_000
STREAMS = ("stdout", "stderr")


class BadArgs(Exception):
    pass


def result_row(instance: Instance, ok: bool, error: str | None = None) -> Row:
    return {"name": instance.name, "state": instance.state.value, "ok": ok, "error": error}


def outcome(instances: list[Instance], wanted: State) -> list[Row]:
    """Per instance: did it reach the state the command wanted?"""
    rows = []
    for instance in instances:
        ok = instance.state is wanted
        rows.append(result_row(instance, ok, None if ok else describe_failure(instance)))
    return rows


def describe_failure(instance: Instance) -> str:
    return describe_exit(instance.exit_status) or f"ended {instance.state.value}"


if TYPE_CHECKING:
    class DaemonHooks(Protocol):
        """What the commands ask of the daemon itself."""

        @property
        def shutting_down(self) -> bool: ...
        @property
        def reexecs(self) -> int: ...
        def uptime(self) -> float: ...
        def shutdown(self, on_done: Callable[[], None] | None) -> None: ...
        def reload(self, on_done: Callable[[dict[str, Any]], None]) -> None: ...
        def reexec(self, reason: str, answer: Callable[[str | None], None]) -> None: ...


class Commands:
    def __init__(self, supervisor: Supervisor, daemon: DaemonHooks) -> None:
        self.registry = supervisor.registry
        self.orchestrator = supervisor.orchestrator
        self.rolls = supervisor.rolls
        self.logs = supervisor.logs
        self.status = supervisor.status
        self.metrics = supervisor.metrics
        self.launcher = supervisor.launcher
        self.daemon = daemon
        self.subscribers = Subscribers(supervisor.bus)
        self.followers: set[Connection] = set()  # connections that `logs -f`

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
        return self.registry.resolve(names)

    def _refuse_during_shutdown(self, reply: Reply) -> bool:
        if self.daemon.shutting_down:
            reply.error("shutting_down", "superd is shutting down")
            return True
        return False

    # -- commands ---------------------------------------------------------
    def cmd_ping(self, args: dict[str, Any], reply: Reply) -> None:
        """Daemon version, pid, uptime in seconds (since the first image: a
        re-exec keeps it), re-execs, what kills the workers if superd dies,
        and the config's group names."""
        reply.ok({"version": __version__, "pid": os.getpid(),
                  "uptime": round(self.daemon.uptime(), 3), "reexecs": self.daemon.reexecs,
                  "guard": self.launcher.guard(), "groups": self.registry.group_names()})

    def cmd_reexec(self, args: dict[str, Any], reply: Reply) -> None:
        """Check the installed superd, reply, then exec it in place (as SIGUSR2)."""
        def answer(refused: str | None) -> None:
            if refused is None:
                reply.ok({"pid": os.getpid(), "reexecs": self.daemon.reexecs + 1})
            else:
                reply.error("reexec_refused", refused)

        self.daemon.reexec("request", answer)

    def say_farewell(self, event: dict[str, Any]) -> None:
        """Tell every `logs -f` the last event of this image (subscribers have
        it from the bus)."""
        for connection in list(self.followers):
            connection.send(Kind.EVENT, event)

    def cmd_status(self, args: dict[str, Any], reply: Reply) -> None:
        """One row per named instance (all when none are named)."""
        reply.ok_json(self.status.rows_json(self._instances(args)))

    def cmd_metrics(self, args: dict[str, Any], reply: Reply) -> None:
        """The Prometheus text exposition of superd and every instance, as `text`."""
        reply.ok({"text": self.metrics.text()})

    def cmd_start(self, args: dict[str, Any], reply: Reply) -> None:
        """Start instances; with wait (default) reply once RUNNING or FATAL."""
        instances, wait = self._instances(args), _flag(args, "wait", True)
        if self._refuse_during_shutdown(reply):
            return
        self.orchestrator.start_all(instances)
        self._reply_when_started(instances, wait, reply)

    def cmd_stop(self, args: dict[str, Any], reply: Reply) -> None:
        """Stop instances; reply once every one is STOPPED."""
        instances = self._instances(args)
        self.rolls.end_rolls_of(instances, "was stopped")
        self.orchestrator.stop_in_order(instances,
                                        lambda: reply.ok(outcome(instances, State.STOPPED)))

    def cmd_restart(self, args: dict[str, Any], reply: Reply) -> None:
        """Stop (if running) then start instances; reply as start does.  With
        rolling, one at a time in dependency order, each serving (RUNNING,
        and healthy if it has a healthcheck) before the next is stopped."""
        instances, wait = self._instances(args), _flag(args, "wait", True)
        rolling = _flag(args, "rolling", False)
        if self._refuse_during_shutdown(reply):
            return
        try:
            self.rolls.check_free(instances)
        except RollBusy as exc:
            reply.error("busy", str(exc))
            return
        if rolling:
            self._roll(self.orchestrator.in_start_order(instances), wait, reply)
            return
        self.orchestrator.restart(instances)
        self._reply_when_started(instances, wait, reply)

    def _roll(self, instances: list[Instance], wait: bool, reply: Reply) -> None:
        def rolled(outcome: Outcome) -> None:
            if wait:
                reply.ok([result_row(i, why is None, why) for i, why in outcome])

        self.rolls.begin(instances, rolled)
        if not wait:
            reply.ok([result_row(i, i.state is not State.FATAL) for i in instances])

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
            signal_group(instance.pid, signum)
            rows.append(result_row(instance, True))
        reply.ok(rows)

    def cmd_shutdown(self, args: dict[str, Any], reply: Reply) -> None:
        """Stop every worker, reply, then the daemon exits."""
        self.daemon.shutdown(lambda: reply.ok({}))

    def cmd_reopen(self, args: dict[str, Any], reply: Reply) -> None:
        """Reopen every log file superd writes (same as SIGUSR1)."""
        self.logs.reopen()
        reply.ok({})

    def cmd_logs(self, args: dict[str, Any], reply: Reply) -> None:
        """The last `lines` lines of one instance's (`name`) or several
        instances' (`names`: merged in time order) stdout or stderr;
        `follow` streams more."""
        lines, stream, follow = _logs_args(args)
        if "names" in args:
            instances = self._instances(args)
            named = self._log_files(instances, stream)
            merged = merged_tail(named, lines)
            reply.ok({"names": [i.name for i in instances], "stream": stream,
                      "lines": [[name, line.decode(errors="replace")] for name, line in merged]})
        else:
            instance = self._one_instance(args.get("name"))
            named = self._log_files([instance], stream)
            text = named[0][1].tail(lines).decode(errors="replace")
            reply.ok({"name": instance.name, "stream": stream, "data": text})
        if follow:
            self._follow(reply.connection, named, stream)

    def _log_files(self, instances: list[Instance], stream: str) -> list[tuple[str, LogFile]]:
        """Each instance's file for the stream; a file several share, once."""
        named: dict[int, tuple[str, LogFile]] = {}
        for instance in instances:
            stdout, stderr = self.launcher.log_settings(instance)
            log_file = self.logs.file_for(instance.name, stdout, stderr, stream)
            named.setdefault(id(log_file), (instance.name, log_file))
        return list(named.values())

    def _follow(self, connection: Connection, named: list[tuple[str, LogFile]],
                stream: str) -> None:
        for name, log_file in named:
            follow_log(connection, name, stream, log_file)
        self.followers.add(connection)
        connection.when_closed(lambda: self.followers.discard(connection))

    def _one_instance(self, name: object) -> Instance:
        if not isinstance(name, str):
            raise BadArgs("'name' must be a string")
        instances = self.registry.resolve([name])
        if len(instances) != 1 or name == "all":
            raise BadArgs(f"{name} has {len(instances)} instances; name one, e.g. "
                          f"{instances[0].name}")
        return instances[0]


    def cmd_reload(self, args: dict[str, Any], reply: Reply) -> None:
        """Re-read the config; apply what changed; reply with the diff applied."""
        try:
            self.daemon.reload(reply.ok)
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
        self.orchestrator.when_started(instances,
                                       lambda: reply.ok(outcome(instances, State.RUNNING)))


def _flag(args: dict[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise BadArgs(f"'{key}' must be true or false")
    return value


def _logs_args(args: dict[str, Any]) -> tuple[int, str, bool]:
    lines, stream, follow = args.get("lines", 50), args.get("stream", "stdout"), \
        args.get("follow", False)
    if not isinstance(lines, int) or isinstance(lines, bool) or not 0 <= lines <= MAX_LINES:
        raise BadArgs(f"'lines' must be an integer from 0 to {MAX_LINES}")
    if stream not in STREAMS:
        raise BadArgs("'stream' must be 'stdout' or 'stderr'")
    if not isinstance(follow, bool):
        raise BadArgs("'follow' must be true or false")
    return lines, stream, follow


def follow_log(connection: Connection, name: str, stream: str, log_file: LogFile) -> Follow:
    """Push new output as events until the client goes, or falls too far behind."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(data: bytes) -> None:
        if connection.finishing:
            follow.cancel()
        elif connection.pending_output > FOLLOW_LIMIT:
            follow.cancel()
            connection.send(Kind.EVENT, {"event": "log_cut", "name": name, "stream": stream,
                                         "message": "reading too slowly; disconnected"})
            connection.close_after_flush()
        else:
            connection.send(Kind.EVENT, {"event": "log", "name": name, "stream": stream,
                                         "data": decoder.decode(data)})

    follow = log_file.follow(push)
    connection.when_closed(follow.cancel)
    return follow
