"""Benchmark: superd against supervisord 4.3.0 on identical workloads, in one table.

Run on purpose, not in CI, with the Python of a venv where superd is installed
(the `superd` and `superctl` next to that Python are the ones measured):

    python tests/bench/compare.py [--quick] [--json FILE] [--skip-supervisord] [--runs N]

supervisord is pip-installed into a venv of its own under a temporary folder.
Every figure is measured in alternating runs (superd, supervisord, superd,
supervisord ...), one daemon at a time, each in a fresh temporary folder:

1. restart: a worker writes its pid into a FIFO (`sh -c 'echo $$ > FIFO; exec
   sleep 600'`); time from `kill -9` of the RUNNING worker to the read of the
   new pid. Floor: a bare posix_spawn loop of the same command in this process.
2. raw `status` and `ping` round trips on each daemon's own socket (superd's
   wire protocol; supervisord's XML-RPC getAllProcessInfo and getState over one
   persistent HTTP connection), timed until the reply's last byte is in, with
   the daemon's CPU per call (/proc, around the batch).
3. `superctl -s SOCKET status` and `supervisorctl -c CONF status` as whole
   processes; floor: `python -I -S -c pass` from this venv, interleaved.
4. cold start (launch -> every instance RUNNING), stop all, start all, and a
   reap storm (SIGKILL every worker -> all RUNNING with new pids, then zombies).
   Floor for cold start and the storm: a bare posix_spawn loop in this process
   starting the same workers, each with a stdout and a stderr pipe kept open,
   until all have exec'd (FloorFleet; it has no status to confirm with).
5. idle context switches of the daemon (and of a helper it keeps above itself,
   superd's keeper) with all workers RUNNING; the daemon's PSS, the helper's.

Each figure with many samples per run is shown as median and p95 over all
runs; a figure with one value a run as the median of the runs. A batch of
raw calls or ctl runs stops early once it has taken 20 s (supervisord's status
of 1000 takes seconds). "All RUNNING" is watched in /proc first (every worker
a child of the daemon that has exec'd its program), then confirmed by status
polls 50 ms apart; the figure is when the confirming poll was sent. `--quick`
is a small version for the smoke test: every figure, fewer samples, 50
workers for the big ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from contenders import (  # noqa: E402
    Daemon,
    States,
    SuperdDaemon,
    SupervisordDaemon,
    WorkerSpec,
    install_supervisord,
    supervisord_version,
)
from probes import (  # noqa: E402
    BenchTimeout,
    FloorFleet,
    PidFifo,
    context_switches,
    count_running,
    cpu_seconds,
    floor_restarts,
    pss_mib,
    worker_argv,
)
from report import Results, table, write_json  # noqa: E402

from support import (  # noqa: E402
    become_subreaper,
    pids_tagged,
    reap_adopted,
    zombie_children,
)

MS = 1000.0
FLOOR_PYTHON = [sys.executable, "-I", "-S", "-c", "pass"]
SLEEPER = ("sleep", "600")
TIMEOUTS = (BenchTimeout, TimeoutError, subprocess.TimeoutExpired)


@dataclass(frozen=True)
class Plan:
    runs: int
    kills: int
    small: int
    big: int
    calls: int
    ctl_runs: int
    idle_seconds: float
    timeout: float
    batch_seconds: float  # a batch of calls or runs stops early past this (at least MIN_BATCH)
    poll_interval: float = 0.05
    settle: float = 1.0


FULL = Plan(runs=3, kills=30, small=10, big=1000, calls=200, ctl_runs=20, idle_seconds=30,
            timeout=180, batch_seconds=20)
QUICK = Plan(runs=1, kills=5, small=10, big=50, calls=20, ctl_runs=3, idle_seconds=5,
             timeout=30, batch_seconds=3)
MIN_BATCH = 5


def define_figures(plan: Plan) -> Results:
    results = Results()
    results.define("restart", "restart after kill -9", "ms")
    for size, count in (("small", plan.small), ("big", plan.big)):
        results.define(f"status_raw_{size}", f"raw status, {count} workers", "ms")
        results.define(f"status_cpu_{size}", f"raw status daemon CPU/call, {count} workers",
                       "ms", ("median",))
        results.define(f"ping_raw_{size}", f"raw ping, {count} workers", "ms")
        results.define(f"ping_cpu_{size}", f"raw ping daemon CPU/call, {count} workers",
                       "ms", ("median",))
        results.define(f"ctl_status_{size}", f"ctl status (whole process), {count} workers", "ms")
    per_run = ("median",)
    results.define("cold_start", f"cold start -> {plan.big} RUNNING", "s", per_run)
    results.define("start_all", f"start all {plan.big} (warm)", "s", per_run)
    results.define("stop_all", f"stop all {plan.big}", "s", per_run)
    results.define("reap_storm", f"reap storm: kill -9 {plan.big} -> RUNNING", "s", per_run)
    results.define("reap_zombies", "reap storm: daemon's zombies after", "count", ("max",))
    results.define("idle_wakeups", f"idle ctx switches in {plan.idle_seconds:g}s (daemon and "
                   f"helper), {plan.small} workers", "count", per_run)
    results.define("pss_small", f"daemon PSS, {plan.small} workers", "MiB", per_run)
    results.define("pss_helper", "PSS of a helper process (superd's keeper)", "MiB", per_run)
    results.define("pss_big", f"daemon PSS, {plan.big} workers", "MiB", per_run)
    return results


Step = tuple[list[str], Callable[[], None]]


class Bench:
    """One whole comparison: the plan, the temporary root, the results."""

    def __init__(self, plan: Plan, root: Path, contenders: Sequence[type[Daemon]]) -> None:
        self.plan = plan
        self.root = root
        self.contenders = contenders
        self.results = define_figures(plan)
        self.tag = f"superd-bench-{uuid.uuid4().hex}"
        self.daemon_env = clean_env(SUPERD_TEST_TAG=self.tag, NO_COLOR="1")
        self.ctl_env = clean_env(NO_COLOR="1")
        self.killed_after_sessions: dict[str, int] = {}
        self.connections_closed_on_us = 0
        # A status that scans /proc (superd's did, whole) costs more with
        # others' processes on the machine: how many there were at each batch.
        self.processes_at_status: dict[str, list[int]] = {}

    # -- the three phases, each in alternating runs -------------------------
    def run(self) -> None:
        for run in range(self.plan.runs):
            self.floor_restarts(run)
            for contender in self.contenders:
                self.restart_session(contender, run)
        for run in range(self.plan.runs):
            for contender in self.contenders:
                self.small_session(contender, run)
        for run in range(self.plan.runs):
            self.floor_fleet(run)
            for contender in self.contenders:
                self.big_session(contender, run)

    def floor_restarts(self, run: int) -> None:
        progress(f"run {run + 1}: restart floor")
        folder = self.root / f"floor-{run}"
        folder.mkdir()
        fifo = PidFifo(folder / "pid.fifo")
        try:
            latencies = floor_restarts(fifo, worker_argv(fifo.path), self.plan.kills,
                                       self.daemon_env, self.plan.timeout)
        finally:
            fifo.close()
        self.results["restart"].add("floor", *(value * MS for value in latencies))

    def floor_fleet(self, run: int) -> None:
        progress(f"run {run + 1}: cold start and reap storm floor")
        fleet = FloorFleet(SLEEPER, self.plan.big, self.daemon_env, self.plan.timeout,
                           self.plan.poll_interval)
        try:
            self.results["cold_start"].add("floor", fleet.cold_start())
            self.results["reap_storm"].add("floor", fleet.reap_storm())
        finally:
            fleet.close()
            reap_adopted()

    def restart_session(self, contender: type[Daemon], run: int) -> None:
        folder = self.root / f"restart-{contender.label}-{run}"
        fifo_path = folder / "pid.fifo"
        victim = WorkerSpec("victim", tuple(worker_argv(fifo_path)), 1)
        daemon = self.daemon(contender, folder, victim)
        fifo = PidFifo(fifo_path)
        try:
            self.steps(daemon, run, "restart", [(["restart"], lambda: self.kills(daemon, fifo))])
        finally:
            fifo.close()

    def small_session(self, contender: type[Daemon], run: int) -> None:
        daemon = self.daemon(contender, self.root / f"small-{contender.label}-{run}",
                             WorkerSpec("w", SLEEPER, self.plan.small))
        self.steps(daemon, run, f"{self.plan.small} workers", [
            (["pss_small", "pss_helper"], lambda: self.launch_then_pss(daemon, "pss_small")),
            (raw_keys("small"), lambda: self.raw_round_trips(daemon, "small")),
            (["ctl_status_small"], lambda: self.ctl_status(daemon, "ctl_status_small")),
            (["idle_wakeups"], lambda: self.idle_wakeups(daemon)),
        ])

    def big_session(self, contender: type[Daemon], run: int) -> None:
        daemon = self.daemon(contender, self.root / f"big-{contender.label}-{run}",
                             WorkerSpec("w", SLEEPER, self.plan.big))
        self.steps(daemon, run, f"{self.plan.big} workers", [
            (["cold_start"], lambda: self.cold_start(daemon)),
            (["pss_big"], lambda: self.record(daemon, "pss_big", pss_mib(daemon.pid))),
            (raw_keys("big"), lambda: self.raw_round_trips(daemon, "big")),
            (["ctl_status_big"], lambda: self.ctl_status(daemon, "ctl_status_big")),
            (["reap_storm", "reap_zombies"], lambda: self.reap_storm(daemon)),
            (["stop_all"], lambda: self.timed(daemon, "stop_all", daemon.stop_all)),
            (["start_all"], lambda: self.timed(daemon, "start_all", daemon.start_all)),
        ])

    # -- sessions ---------------------------------------------------------------
    def daemon(self, contender: type[Daemon], folder: Path, worker: WorkerSpec) -> Daemon:
        return contender(folder, [worker], self.daemon_env, self.plan.timeout)

    def steps(self, daemon: Daemon, run: int, what: str, steps: list[Step]) -> None:
        """Run the steps in order on one daemon; after a timeout, skip the rest."""
        progress(f"run {run + 1}: {daemon.label}, {what}")
        try:
            for index, (keys, step) in enumerate(steps):
                try:
                    step()
                except TIMEOUTS as exc:
                    progress(f"  {daemon.label}: timeout in {keys[0]}: {exc}")
                    self.results.note(keys, daemon.label, "timeout")
                    for later, _ in steps[index + 1:]:
                        self.results.note(later, daemon.label, "skipped")
                    return
        finally:
            daemon.shutdown()
            self.connections_closed_on_us += daemon.closed_on_us
            self.sweep(daemon.label)

    def sweep(self, label: str) -> None:
        """Kill (and count) any worker a daemon left behind, so the next run is clean."""
        deadline = time.monotonic() + 5.0
        while (left := pids_tagged(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            kill_quietly(pid)
        if left:
            progress(f"  {label} left {len(left)} processes behind; killed them")
            self.killed_after_sessions[label] = self.killed_after_sessions.get(label, 0) + len(
                left)
        reap_adopted()

    def record(self, daemon: Daemon, key: str, *values: float) -> None:
        self.results[key].add(daemon.label, *values)

    def timed(self, daemon: Daemon, key: str, action: Callable[[], None]) -> None:
        began = time.perf_counter()
        action()
        self.record(daemon, key, time.perf_counter() - began)

    # -- figures ----------------------------------------------------------------
    def kills(self, daemon: Daemon, fifo: PidFifo) -> None:
        daemon.launch()
        pid = fifo.read_pid(self.plan.timeout)
        for _ in range(self.plan.kills):
            self.wait_running(daemon, pid)
            began = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            new = fifo.read_pid(self.plan.timeout)
            self.record(daemon, "restart", (time.perf_counter() - began) * MS)
            if new == pid:
                raise AssertionError("the restarted worker reported the old pid")
            pid = new

    def wait_running(self, daemon: Daemon, pid: int) -> None:
        """Until the daemon itself reports this pid RUNNING (not merely spawned)."""
        def running(states: States) -> bool:
            return ("RUNNING", pid) in states.values()
        poll_until(daemon, time.perf_counter(), running, self.plan.timeout, 0.005)

    def launch_then_pss(self, daemon: Daemon, key: str) -> None:
        began = time.perf_counter()
        daemon.launch()
        self.wait_workers(daemon, began, set())
        self.record(daemon, key, pss_mib(daemon.pid))
        self.record(daemon, "pss_helper", sum(pss_mib(pid) for pid in daemon.helpers()))

    def cold_start(self, daemon: Daemon) -> None:
        began = time.perf_counter()
        daemon.launch()
        self.record(daemon, "cold_start", self.wait_workers(daemon, began, set()))

    def wait_workers(self, daemon: Daemon, began: float, old: set[int]) -> float:
        """Seconds from began until every instance RUNNING, with a pid not in old.

        First /proc, which costs the daemon nothing, until every worker has
        exec'd its program; then status polls, and the figure is when the
        first poll whose reply says all RUNNING was sent. Polling status from
        the start would time the polls: one of 1000 instances costs superd
        ~0.1 s and supervisord ~2 s of CPU.
        """
        [program] = {worker.argv[0] for worker in daemon.workers}
        deadline = began + self.plan.timeout
        while True:
            try:
                parent = daemon.pid
            except (OSError, ValueError):  # no pidfile yet
                parent = 0
            if parent and count_running(parent, program, old) >= daemon.instances:
                break
            if time.perf_counter() > deadline:
                raise BenchTimeout(f"{daemon.label}: workers not running within "
                                   f"{self.plan.timeout:g}s")
            time.sleep(self.plan.poll_interval)

        def replaced(states: States) -> bool:
            return all_running(daemon)(states) and not old & {pid for _, pid in states.values()}

        return poll_until(daemon, began, replaced, deadline - began, self.plan.poll_interval)

    def raw_round_trips(self, daemon: Daemon, size: str) -> None:
        pid = daemon.pid
        self.processes_at_status.setdefault(daemon.label, []).append(machine_processes())
        for what, call in (("status", daemon.timed_status), ("ping", daemon.timed_ping)):
            call()  # connects, and warms whatever the first call warms
            before = cpu_seconds(pid)
            latencies = self.batch(call, self.plan.calls)
            cpu = (cpu_seconds(pid) - before) / len(latencies)
            self.record(daemon, f"{what}_raw_{size}", *(value * MS for value in latencies))
            self.record(daemon, f"{what}_cpu_{size}", cpu * MS)

    def batch(self, call: Callable[[], float], count: int) -> list[float]:
        """count results of call, fewer (at least MIN_BATCH) once the time budget is spent."""
        ends = time.perf_counter() + self.plan.batch_seconds
        results: list[float] = []
        while len(results) < count and (len(results) < MIN_BATCH or time.perf_counter() < ends):
            results.append(call())
        return results

    def ctl_status(self, daemon: Daemon, key: str) -> None:
        daemon.close_client()
        argv = daemon.ctl_status_argv()

        def floor_then_ctl() -> float:
            self.results[key].add("floor", self.timed_process(FLOOR_PYTHON) * MS)
            return self.timed_process(argv)

        self.record(daemon, key, *(value * MS for value in self.batch(floor_then_ctl,
                                                                      self.plan.ctl_runs)))

    def timed_process(self, argv: list[str]) -> float:
        began = time.perf_counter()
        done = subprocess.run(argv, env=self.ctl_env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=self.plan.timeout)
        elapsed = time.perf_counter() - began
        if done.returncode not in (0, 3):  # 3: not every instance RUNNING
            raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr!r}")
        return elapsed

    def reap_storm(self, daemon: Daemon) -> None:
        before = daemon.states()
        if not all_running(daemon)(before):
            raise AssertionError(f"{daemon.label}: not every worker RUNNING before the storm")
        old = {pid for _, pid in before.values() if pid is not None}
        began = time.perf_counter()
        for pid in old:
            kill_quietly(pid)
        self.record(daemon, "reap_storm", self.wait_workers(daemon, began, old))
        self.record(daemon, "reap_zombies", len(zombie_children(daemon.pid)))

    def idle_wakeups(self, daemon: Daemon) -> None:
        daemon.close_client()
        time.sleep(self.plan.settle)  # let the daemon finish with the closed connection
        watched = [daemon.pid, *daemon.helpers()]
        before = sum(context_switches(pid) for pid in watched)
        time.sleep(self.plan.idle_seconds)
        after = sum(context_switches(pid) for pid in watched)
        self.record(daemon, "idle_wakeups", after - before)


def raw_keys(size: str) -> list[str]:
    return [f"{what}_{kind}_{size}" for what in ("status", "ping") for kind in ("raw", "cpu")]


def all_running(daemon: Daemon) -> Callable[[States], bool]:
    def check(states: States) -> bool:
        return (len(states) == daemon.instances
                and all(state == "RUNNING" and pid for state, pid in states.values()))
    return check


def poll_until(daemon: Daemon, began: float, done: Callable[[States], bool], timeout: float,
               interval: float) -> float:
    """Seconds from `began` to the sending of the first status poll whose reply
    satisfies done; polls are interval apart (from one reply to the next poll)."""
    deadline = began + timeout
    while True:
        sent = time.perf_counter()
        try:
            states: States | None = daemon.states()
        except (ConnectionError, FileNotFoundError):  # not listening yet
            states = None
        if states is not None and done(states):
            return sent - began
        if time.perf_counter() > deadline:
            raise BenchTimeout(f"{daemon.label}: condition not met within {timeout:g}s")
        time.sleep(interval)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a daemon or client elsewhere."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "SUPERD_SOCKET", "SUPERD_CONFIG", "NOTIFY_SOCKET",
               "SUPERD_TEST_TAG"}
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **extra}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE to the hard limit, for both daemons alike (superd does it
    itself; supervisord with 1000 workers needs about 5000 descriptors)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the command ------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="superd vs supervisord 4.3.0, one table")
    parser.add_argument("--quick", action="store_true",
                        help="a small run of every figure (smoke test)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--skip-supervisord", action="store_true",
                        help="measure superd alone (no package index needed)")
    parser.add_argument("--runs", type=int, help="alternating runs per figure")
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.runs is not None:
        plan = Plan(**{**asdict(plan), "runs": max(1, args.runs)})
    return plan


@contextmanager
def temporary_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="superd-bench-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def versions(supervisord_bin: Path | None) -> dict[str, str | None]:
    superd = subprocess.run([str(SuperdDaemon.bin_dir / "superd"), "--version"], check=True,
                            capture_output=True, text=True).stdout.strip()
    return {"superd": superd,
            "supervisord": supervisord_version(supervisord_bin) if supervisord_bin else None}


def machine_processes() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def machine_load() -> dict[str, float]:
    """Others' load skews every figure; a status that scans /proc, their processes too."""
    return {"loadavg_1min": round(os.getloadavg()[0], 2), "processes": machine_processes()}


def final_cleanup(bench: Bench) -> dict[str, Any]:
    """What is left once every daemon is gone: must be nothing."""
    reap_adopted()
    leftovers = pids_tagged(bench.tag)
    for pid in leftovers:
        kill_quietly(pid)
    reap_adopted()
    return {"zombies": zombie_children(os.getpid()), "leftover_processes": leftovers,
            "killed_after_sessions": bench.killed_after_sessions}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    become_subreaper()
    raise_fd_limit()
    began, machine = time.monotonic(), machine_load()
    with temporary_root() as root:
        supervisord_bin = None if args.skip_supervisord else install_supervisord(root)
        if supervisord_bin is not None:
            SupervisordDaemon.bin_dir = supervisord_bin
        contenders = [SuperdDaemon] + ([SupervisordDaemon] if supervisord_bin else [])
        bench = Bench(plan, root, contenders)
        try:
            bench.run()
        finally:
            cleanup = final_cleanup(bench)
        meta = {"versions": versions(supervisord_bin), "plan": asdict(plan),
                "python": sys.version.split()[0], "kernel": platform.release(),
                "cpus": os.cpu_count(), "seconds": round(time.monotonic() - began, 1),
                "client_connections_closed_by_daemon": bench.connections_closed_on_us,
                "machine_at_start": machine, "machine_at_end": machine_load(),
                "processes_on_machine_at_raw_batches": bench.processes_at_status}
    print(table(bench.results))
    print(f"\n{meta['versions']}; {plan.runs} alternating runs; "
          f"{plan.kills} kills, {plan.calls} raw calls, {plan.ctl_runs} ctl runs a run; "
          f"whole run {meta['seconds']:.0f} s;\nmachine at start {machine}, "
          f"at end {meta['machine_at_end']}; processes on the machine at the raw batches "
          f"{bench.processes_at_status}")
    clean = not cleanup["zombies"] and not cleanup["leftover_processes"]
    print("cleanup: no zombie, no leftover process" if clean else f"cleanup FAILED: {cleanup}")
    json_path = args.json or Path(tempfile.gettempdir()) / f"superd-bench-{os.getpid()}.json"
    write_json(json_path, bench.results, meta, cleanup)
    print(f"json: {json_path}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
