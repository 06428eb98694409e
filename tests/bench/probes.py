"""What compare.py reads and times outside the daemons: /proc figures of a
process, the pid FIFO the restart workers write to, the bare spawn loop that
is the floor for a restart, and the two statistics it reports."""

from __future__ import annotations

import math
import os
import select
import signal
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


class BenchTimeout(Exception):
    """A figure did not complete within its deadline."""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _tasks(pid: int) -> list[Path]:
    return sorted(Path(f"/proc/{pid}/task").iterdir())


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every thread of pid.

    Read from /proc/PID/task/TID/schedstat (nanoseconds): utime+stime of
    /proc/PID/stat count 10 ms ticks, too coarse for calls of 50 us. The
    ticks are the fallback where the kernel has no schedstat.
    """
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in _tasks(pid)) / 1e9
    except (OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def context_switches(pid: int) -> int:
    """voluntary + nonvoluntary context switches of every thread of pid."""
    total = 0
    for task in _tasks(pid):
        for line in (task / "status").read_text().splitlines():
            if line.split(":")[0].endswith("ctxt_switches"):
                total += int(line.split()[1])
    return total


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no Pss in /proc/{pid}/smaps_rollup")


def children(pid: int) -> list[int]:
    """The live and zombie children of pid, from the kernel's own list."""
    found: list[int] = []
    for task in _tasks(pid):
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def runs_program(pid: int, program: str) -> bool:
    """pid is alive (not a zombie) and has exec'd program (its comm is the name)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    return comm == program[:15] and stat[stat.rindex(")") + 2] != "Z"


def count_running(parent: int, program: str, exclude: set[int]) -> int:
    """Children of parent running program, other than the pids in exclude.

    Read from /proc, so watching costs the daemon nothing (a status poll of
    1000 instances can cost it more than the work being watched).
    """
    try:
        kids = children(parent)
    except OSError:  # not started yet, or gone
        return 0
    return sum(1 for kid in kids if kid not in exclude and runs_program(kid, program))


class PidFifo:
    """A FIFO each restart worker writes its pid into (`echo $$ > FIFO`).

    Held open read-write, so a writer's open never blocks and a reader never
    sees end-of-file between two workers.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.buffer = b""

    def read_pid(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise BenchTimeout(f"no pid in {self.path} within {timeout}s")
            self.buffer += os.read(self.fd, 4096)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return int(line)

    def close(self) -> None:
        os.close(self.fd)


def worker_argv(fifo: Path) -> list[str]:
    """The restart worker, for the floor and both daemons alike."""
    return ["sh", "-c", f"echo $$ > {fifo}; exec sleep 600"]


def floor_restarts(fifo: PidFifo, argv: list[str], kills: int, env: dict[str, str],
                   timeout: float) -> list[float]:
    """Seconds from kill to the new pid read, for a bare posix_spawn loop:
    kill -9, reap, spawn the same command, read its pid from the FIFO."""
    program = _which(argv[0], env)
    quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
             (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    pid = os.posix_spawn(program, argv, env, file_actions=quiet)
    fifo.read_pid(timeout)
    latencies = []
    try:
        for _ in range(kills):
            began = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pid = os.posix_spawn(program, argv, env, file_actions=quiet)
            if fifo.read_pid(timeout) != pid:
                raise AssertionError("the FIFO gave another pid than the one spawned")
            latencies.append(time.perf_counter() - began)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return latencies


class FloorFleet:
    """The floor for cold start and the reap storm: a bare posix_spawn loop
    that starts `count` of the same worker, each with a stdout and a stderr
    pipe kept open (as a supervisor keeps them), and waits, as the bench waits
    for a daemon's, until every one has exec'd its program."""

    def __init__(self, argv: Sequence[str], count: int, env: dict[str, str],
                 timeout: float, poll: float) -> None:
        self.argv, self.count, self.env = list(argv), count, env
        self.program = _which(argv[0], env)
        self.timeout, self.poll = timeout, poll
        self.workers: dict[int, tuple[int, int]] = {}  # pid -> its pipes' read ends

    def cold_start(self) -> float:
        began = time.perf_counter()
        self._spawn_all()
        return self._wait_running(began, set())

    def reap_storm(self) -> float:
        """kill -9 every worker, reap each, spawn all again: until all run."""
        old = set(self.workers)
        began = time.perf_counter()
        self._kill_all()
        self._spawn_all()
        return self._wait_running(began, old)

    def close(self) -> None:
        self._kill_all()

    def _spawn_all(self) -> None:
        for _ in range(self.count):
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            err_read, err_write = os.pipe2(os.O_CLOEXEC)
            try:
                pid = os.posix_spawn(self.program, self.argv, self.env, setsid=True,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, out_write, 1),
                                                   (os.POSIX_SPAWN_DUP2, err_write, 2)])
            finally:
                os.close(out_write)
                os.close(err_write)
            self.workers[pid] = (out_read, err_read)

    def _kill_all(self) -> None:
        for pid in self.workers:
            os.kill(pid, signal.SIGKILL)
        for pid, pipes in self.workers.items():
            os.waitpid(pid, 0)
            for fd in pipes:
                os.close(fd)
        self.workers.clear()

    def _wait_running(self, began: float, old: set[int]) -> float:
        name = Path(self.program).name
        deadline = began + self.timeout
        while count_running(os.getpid(), name, old) < self.count:
            if time.perf_counter() > deadline:
                raise BenchTimeout(f"floor: workers not running within {self.timeout:g}s")
            time.sleep(self.poll)
        return time.perf_counter() - began


def _which(program: str, env: dict[str, str]) -> str:
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(folder) / program
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(program)
