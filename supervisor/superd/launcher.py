"""Launching a worker: everything the child needs, gathered in the parent.

The spawn spec (argv, environment, folder, user, output pipes, listening
sockets) is built here from the instance's config; spawn.py does the fork and
the child's side.  Signalling a worker's process group lives here too.
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass

from .keeper import guard
from .listen import Listeners
from .logs import Logs
from .spawn import SpawnSpec, spawn
from .worker import Instance

log = logging.getLogger("superd")


@dataclass(frozen=True)
class Launched:
    """How superd itself was started, as far as its workers are concerned."""

    nofile: int | None = None  # RLIMIT_NOFILE soft limit for workers (None: superd's)
    keeper_pid: int | None = None  # the keeper above a detached superd (keeper.py)


class Launcher:
    def __init__(self, logs: Logs, sockets: Listeners,
                 notify_address: Callable[[], str | None], launched: Launched) -> None:
        self.logs = logs
        self.sockets = sockets
        self.notify_address = notify_address  # the NOTIFY_SOCKET for `ready: notify`
        self.launched = launched
        # superd's environment never changes: decode os.environ once, not per spawn.
        self.base_environment = dict(os.environ)

    def launch(self, instance: Instance) -> int:
        """Fork and exec the instance's command; its pid (OSError if not)."""
        worker = instance.config
        try:
            with self.logs.child_stdio(instance.name, worker.stdout, worker.stderr) as stdio:
                pid = spawn(self.spec(instance, *stdio), self.guard() != "pdeathsig")
        except OSError as exc:
            log.error("%s: cannot start: %s", instance.name, exc)
            raise
        return pid  # its STARTING transition logs the pid and command

    def guard(self) -> str:
        """What kills the workers if superd dies (keeper.guard)."""
        return guard(self.launched.keeper_pid)

    def spec(self, instance: Instance, stdout: int, stderr: int) -> SpawnSpec:
        worker = instance.config
        return SpawnSpec(argv=worker.command, env=self.environment(instance),
                         directory=worker.directory, umask=worker.umask, user=worker.user,
                         stdout_fd=stdout, stderr_fd=stderr,
                         listen_fds=self.sockets.fds(worker.sockets),
                         listen_names=worker.sockets, nofile=self.launched.nofile)

    def environment(self, instance: Instance) -> dict[str, str]:
        env = dict(self.base_environment)
        if instance.config.user is not None:
            env.update(user_environment(instance.config.user))
        env.update(instance.config.environment)
        env["SUPERD_NAME"] = instance.name
        env["SUPERD_INSTANCE"] = str(instance.index)
        # superd's own NOTIFY_SOCKET (from systemd) is never a worker's.
        env.pop("NOTIFY_SOCKET", None)
        address = self.notify_address()
        if instance.config.ready.kind == "notify" and address is not None:
            env["NOTIFY_SOCKET"] = address
        return env


def signal_group(pgid: int, signum: int) -> None:
    """Send signum to a worker's process group; a missing group is no error."""
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


def user_environment(user: str) -> dict[str, str]:
    """What a login as `user` would set, so a worker does not inherit root's HOME."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
