"""Starting a worker process: vfork and exec when that is safe, else fork.

`os.fork()` of a daemon-sized interpreter costs milliseconds (page tables,
then copy-on-write faults in the parent); a vfork-based spawn costs a tenth
of that.  But only a forked child can run Python code before exec, and
PR_SET_PDEATHSIG, which kills a worker when superd dies, must be set by the
child itself.  So the vfork path is taken only when something else already
guarantees that (see keeper.py: `guard`), and only for workers it can
start exactly as the forked path would (no user switch, no listening
sockets to move onto fds 3..).

On the forked path the child never returns into the daemon's code: any
failure before exec is written to its stderr (the worker's log) and ends the
child with status 127, which the parent sees as a failed start like any
other.  A vfork child that cannot exec is reaped at once and the start is
retried on the forked path, so that failure looks the same.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import ctypes
import fcntl
import functools
import os
import pwd
import resource
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any

try:
    import _posixsubprocess
except ImportError:  # not CPython on a POSIX system: the forked path only
    _posixsubprocess = None  # type: ignore[assignment]

_ALL_SIGNALS = tuple(int(signum) for signum in signal.valid_signals())
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


def spawn(spec: SpawnSpec, guarded: bool = False) -> int:
    """Start a worker in its own session and return its pid (the group id too).

    guarded: something other than PR_SET_PDEATHSIG kills it if superd dies."""
    if guarded and fits_vfork(spec):
        pid = _vfork_exec(spec)
        if pid is not None:
            return pid
    return _fork_exec(spec)


def fits_vfork(spec: SpawnSpec) -> bool:
    return _VFORK_EXEC is not None and spec.user is None and not spec.listen_fds


def _fork_exec(spec: SpawnSpec) -> int:
    parent = os.getpid()
    # Until the child has dropped the daemon's handlers and wake-up pipe, a
    # signal sent to it (a quick `stop`) would be written to that pipe and
    # read by the daemon as its own SIGTERM; so signals wait, blocked, until
    # _reset_signals() has run.
    # _signal's own pthread_sigmask: signal's wrapper turns every signal
    # number into an enum member, which cost more than the fork itself.
    blocked = _signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
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
        _signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return pid


def _vfork_exec(spec: SpawnSpec) -> int | None:
    """vfork+exec through CPython's own C child code (what subprocess uses):
    new session, default signal handlers, empty mask, umask, folder, stdio.
    None if the child could not exec (it has been reaped)."""
    assert _VFORK_EXEC is not None
    env = _pass_listen_fds(spec)
    error_read, error_write = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _nofile_for_children(spec.nofile):
            pid = _VFORK_EXEC(spec.argv, _candidates(spec.argv[0], env), spec.directory,
                              [os.fsencode(f"{key}={value}") for key, value in env.items()],
                              null, spec.stdout_fd, spec.stderr_fd, error_read, error_write,
                              spec.umask)
    finally:
        os.close(null)
        os.close(error_write)
    try:
        failed = _exec_error(error_read)
    finally:
        os.close(error_read)
    if failed:
        os.waitpid(pid, 0)
        return None
    return pid


def _exec_error(error_read: int) -> bytes:
    """What the vfork child wrote before it gave up, without waiting: the
    parent resumes when the child has either written and exited, or passed
    exec's point of no return.  In the second case the kernel has yet to
    close the child's close-on-exec descriptors (thousands, with a thousand
    workers), so the pipe is empty but not closed: that is success too."""
    os.set_blocking(error_read, False)
    try:
        return os.read(error_read, 512)
    except BlockingIOError:
        return b""


def _candidates(program: str, env: dict[str, str]) -> tuple[bytes, ...]:
    """The paths exec tries for program, as os.execvpe would search them."""
    return _candidates_on(program, env.get("PATH"))


@functools.lru_cache(maxsize=256)
def _candidates_on(program: str, path: str | None) -> tuple[bytes, ...]:
    # Cached: a restart would otherwise join every folder of PATH again.
    name = os.fsencode(program)
    if os.path.dirname(name):
        return (name,)
    env = {} if path is None else {"PATH": path}
    return tuple(os.path.join(os.fsencode(folder), name) for folder in os.get_exec_path(env))


@contextmanager
def _nofile_for_children(soft: int | None) -> Iterator[None]:
    """Lower our own RLIMIT_NOFILE soft limit for the instant of a vfork, so the
    child inherits the limit superd was started with."""
    current = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = current[0] if soft is None else _clamped_nofile(soft, current[1])
    if wanted == current[0]:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, current[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, current)


def _vfork_exec_call() -> Callable[..., int] | None:
    """fork_exec with the fixed arguments of this CPython version, or None."""
    if _posixsubprocess is None or not sys.platform.startswith("linux"):
        return None
    fork_exec: Callable[..., int] = getattr(_posixsubprocess, "fork_exec")  # noqa: B009
    version = sys.version_info[:2]
    if version == (3, 10):
        process_group: tuple[int, ...] = ()
        allow_vfork: tuple[bool, ...] = ()
    elif (3, 11) <= version <= (3, 13):
        process_group, allow_vfork = (-1,), (True,)
    else:
        return None  # an argument list this module has not been checked against

    def call(argv: Any, executables: Any, cwd: str, env: Any, stdin: int, stdout: int,
             stderr: int, error_read: int, error_write: int, umask: int) -> int:
        return fork_exec(argv, executables, False, (error_write,), cwd, env,
                         stdin, -1, -1, stdout, -1, stderr, error_read, error_write,
                         True, True, *process_group, None, None, None, umask, None,
                         *allow_vfork)
    return call


_VFORK_EXEC = _vfork_exec_call()


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
    resource.setrlimit(resource.RLIMIT_NOFILE, (_clamped_nofile(soft, hard), hard))


def _clamped_nofile(soft: int, hard: int) -> int:
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft > hard):
        return hard  # the hard limit was lowered since superd started
    return soft


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
