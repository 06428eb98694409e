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

from .config import LogConfig
from .expand import (
    expand,
    expanded_command,
    expanded_directory,
    expanded_logs,
    instance_environment,
)
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
        env = self.environment(instance)
        stdout, stderr = expanded_logs(instance.config, env)
        try:
            with self.logs.child_stdio(instance.name, stdout, stderr) as stdio:
                pid = spawn(self.spec(instance, env, *stdio), self.guard() != "pdeathsig")
        except OSError as exc:
            log.error("%s: cannot start: %s", instance.name, exc)
            raise
        return pid  # its STARTING transition logs the pid and command

    def launch_probe(self, instance: Instance, env: dict[str, str]) -> tuple[int, int]:
        """Start the instance's exec healthcheck as the worker would be started
        (user, folder, environment, umask), in a session of its own, with no
        sockets; its pid and the read end of its stdout and stderr."""
        worker = instance.config
        assert worker.healthcheck is not None
        argv = tuple(expand(argument, env) for argument in worker.healthcheck.argv)
        output, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            spec = SpawnSpec(argv=argv, env=env, directory=expanded_directory(worker, env),
                             umask=worker.umask, user=worker.user, stdout_fd=write_end,
                             stderr_fd=write_end, nofile=self.launched.nofile)
            pid = spawn(spec, self.guard() != "pdeathsig")
        except BaseException:
            os.close(output)
            raise
        finally:
            os.close(write_end)
        return pid, output

    def guard(self) -> str:
        """What kills the workers if superd dies (keeper.guard)."""
        return guard(self.launched.keeper_pid)

    def log_settings(self, instance: Instance) -> tuple[LogConfig, LogConfig]:
        """The instance's stdout and stderr settings, its file paths expanded."""
        worker = instance.config
        if not any(isinstance(log.file, str) and "$" in log.file
                   for log in (worker.stdout, worker.stderr)):
            return worker.stdout, worker.stderr
        return expanded_logs(worker, self.environment(instance))

    def spec(self, instance: Instance, env: dict[str, str], stdout: int,
             stderr: int) -> SpawnSpec:
        worker = instance.config
        return SpawnSpec(argv=expanded_command(worker, env), env=env,
                         directory=expanded_directory(worker, env), umask=worker.umask,
                         user=worker.user,
                         stdout_fd=stdout, stderr_fd=stderr,
                         listen_fds=self.sockets.fds(worker.sockets),
                         listen_names=worker.sockets, nofile=self.launched.nofile)

    def environment(self, instance: Instance) -> dict[str, str]:
        base = self.base_environment
        if instance.config.user is not None:
            base = {**base, **user_environment(instance.config.user)}
        env = instance_environment(instance.config, instance.name, instance.index, base)
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
