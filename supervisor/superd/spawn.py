"""Starting a worker process: fork, then the child side up to exec.

The child never returns into the daemon's code: any failure before exec is
written to its stderr (the worker's log) and ends the child with status 127,
which the parent sees as a failed start like any other.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import pwd
import resource
import signal
import sys
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EXEC_FAILED = 127


@dataclass(frozen=True)
class SpawnSpec:
    """Everything the child needs, computed in the parent before fork."""

    argv: tuple[str, ...]
    env: dict[str, str]
    directory: str
    umask: int
    user: str | None
    stdout_fd: int  # write ends of the daemon's output pipes
    stderr_fd: int
    listen_fds: tuple[int, ...] = ()  # become fds 3.. (systemd socket activation)
    listen_names: tuple[str, ...] = ()
    # The RLIMIT_NOFILE soft limit superd was started with (None: keep superd's).
    nofile: int | None = None


def spawn(spec: SpawnSpec) -> int:
    """Fork a worker in its own session and return its pid (the group id too)."""
    parent = os.getpid()
    # Until the child has dropped the daemon's handlers and wake-up pipe, a
    # signal sent to it (a quick `stop`) would be written to that pipe and
    # read by the daemon as its own SIGTERM; so signals wait, blocked, until
    # _reset_signals() has run.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _become_worker(spec, parent)
            except BaseException as exc:  # noqa: BLE001 - the child must never return
                _report(f"superd: cannot start {spec.argv[0]!r}: {exc}")
            finally:
                os._exit(EXEC_FAILED)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return pid


def _become_worker(spec: SpawnSpec, parent: int) -> None:
    signal.set_wakeup_fd(-1)
    _reset_signals()
    _die_with(parent)
    os.setsid()
    _redirect_stdio(spec)
    env = _pass_listen_fds(spec)
    os.umask(spec.umask)
    if spec.nofile is not None:
        _lower_nofile(spec.nofile)
    if spec.user is not None:
        _switch_user(spec.user)
    os.chdir(spec.directory)
    os.execvpe(spec.argv[0], spec.argv, env)


def _reset_signals() -> None:
    # CPython ignores SIGPIPE and SIGXFSZ; exec keeps ignored signals ignored,
    # so a worker would inherit that surprise unless it is undone here.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                   signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL us if the daemon dies, so no worker outlives it."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os._exit(EXEC_FAILED)


def _redirect_stdio(spec: SpawnSpec) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    # dup2 clears close-on-exec on 1 and 2 only; the originals close at exec.
    os.dup2(spec.stdout_fd, 1)
    os.dup2(spec.stderr_fd, 2)


def _pass_listen_fds(spec: SpawnSpec) -> dict[str, str]:
    """Put the listening sockets on fds 3.. and describe them as systemd does."""
    env = dict(spec.env)
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not spec.listen_fds:
        return env
    first = 3
    # Move every source above the target range first, so a dup2 onto 3+i can
    # never clobber a source that is still to be placed.
    above = first + len(spec.listen_fds)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in spec.listen_fds]
    for offset, fd in enumerate(moved):
        os.dup2(fd, first + offset, inheritable=True)
        os.close(fd)
    env["LISTEN_FDS"] = str(len(spec.listen_fds))
    env["LISTEN_PID"] = str(os.getpid())
    env["LISTEN_FDNAMES"] = ":".join(spec.listen_names)
    return env


def _lower_nofile(soft: int) -> None:
    """Give the worker the limit superd was started with, not superd's raised one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft > hard):
        soft = hard  # the hard limit was lowered since superd started
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _switch_user(user: str) -> None:
    entry = pwd.getpwnam(user)
    if os.geteuid() != 0:
        if entry.pw_uid != os.geteuid():
            raise PermissionError(f"only root can run workers as {user!r}")
        return
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _report(message: str) -> None:
    try:
        os.write(2, message.encode(errors="replace") + b"\n")
    except OSError:
        pass


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc().prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def raise_nofile_limit() -> int:
    """Raise our RLIMIT_NOFILE soft limit to the hard limit; return the old soft
    limit, which workers get back (many programs assume 1024 for select())."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # an unlimited hard limit above fs.nr_open: keep what we have
    return soft


def become_subreaper() -> None:
    """Orphans of our workers are re-parented to us, so we reap them too."""
    if sys.platform.startswith("linux"):
        prctl(PR_SET_CHILD_SUBREAPER, 1)
