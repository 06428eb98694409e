"""The keeper: a small process above a detached superd that takes the
workers down with it if superd dies.

PR_SET_PDEATHSIG must be set by each child between fork and exec, which
rules out a vfork-based spawn.  The kernel offers a second way: a child
subreaper inherits the orphans of its descendants.  When superd detaches,
its intermediate process marks itself a subreaper, forks the daemon and
execs this file (`python -I -S keeper.py PID`, standard library only), then
sleeps in waitpid() on the daemon.  However the daemon dies, the kernel
re-parents its children to the keeper before reporting the death, and the
keeper SIGKILLs every process it has adopted (with its process group) until
none is left, then exits.  It ignores the termination signals a terminal or
`pkill` would send; a daemon whose keeper is gone falls back to
PR_SET_PDEATHSIG (see `guard`).
"""

from __future__ import annotations

import os
import signal
import sys

IGNORED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
           signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE)


def become_keeper(daemon_pid: int) -> None:
    """In the intermediate process: exec the keeper (never returns)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # never hold a terminal or a launcher's pipe open
    os.chdir("/")
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__),
                                  str(daemon_pid)])
    except OSError:
        pass
    os._exit(keep(daemon_pid))  # no interpreter to exec: keep in this process


def guard(keeper_pid: int | None) -> str:
    """What takes the workers down if superd dies: `keeper` (still superd's
    parent), `init` (superd is its PID namespace's init: the kernel kills the
    namespace) or `pdeathsig` (nothing else: each worker must set it)."""
    if os.getpid() == 1:
        return "init"
    if keeper_pid is not None and os.getppid() == keeper_pid:
        return "keeper"
    return "pdeathsig"


def keep(daemon_pid: int) -> int:
    for signum in IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    try:
        os.waitpid(daemon_pid, 0)
    except ChildProcessError:
        pass
    kill_adopted()
    return 0


def kill_adopted() -> None:
    """SIGKILL and reap every child until there is none (orphans keep coming
    while the killed workers' own children are re-parented to us)."""
    while True:
        for pid in children():
            kill(pid)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def kill(pid: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass  # already gone, or reaped meanwhile


def children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as file:
            return [int(pid) for pid in file.read().split()]
    except OSError:
        return scan_children(me)


def scan_children(parent: int) -> list[int]:
    """Without /proc/PID/task/TID/children: every process whose parent we are."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


if __name__ == "__main__":
    sys.exit(keep(int(sys.argv[1])))
