"""Benchmark: kill -9 -> replacement running, and `superctl status` wall time.

Run on purpose, not in CI:  python tests/bench/restart_latency.py [--kills 20]

1. A worker whose command appends $EPOCHREALTIME to a file as its first act is
   SIGKILLed N times while RUNNING; latency = that timestamp minus the kill.
2. `superctl -s SOCKET status` with 10 workers, timed as a whole command,
   beside `python -c pass` from the same interpreter (its floor) in the same run.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from support import Superd, become_subreaper, wait_for  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def restart_latency(superd: Superd, kills: int) -> list[float]:
    stamps = superd.folder / "stamps"
    command = ["bash", "-c", f'echo "$EPOCHREALTIME" >> {stamps}; exec sleep 600']
    superd.start({"victim": {"command": command, "startsecs": "100ms"}})
    latencies = []
    for _ in range(kills):
        row = superd.wait_state("victim", "RUNNING")
        before = len(stamps.read_text().split())
        killed_at = time.time()
        os.kill(row["pid"], signal.SIGKILL)
        wait_for(lambda n=before: len(stamps.read_text().split()) > n, what="restart")
        latencies.append(float(stamps.read_text().split()[-1]) - killed_at)
    superd.stop()
    return latencies


def timed_runs(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - began)
    return times


def status_time(superd: Superd, runs: int) -> tuple[list[float], list[float]]:
    superd.start({"w": {"command": ["sleep", "600"], "numprocs": 10, "startsecs": "100ms"}})
    wait_for(lambda: all(r["state"] == "RUNNING" for r in superd.status()), what="RUNNING")
    superctl = Path(sys.executable).with_name("superctl")
    if superctl.exists():  # time the installed command, as users run it
        argv, env = [str(superctl)], {k: v for k, v in superd.env.items() if k != "PYTHONPATH"}
    else:
        argv, env = [sys.executable, "-m", "supervisor.cli"], superd.env
    status = timed_runs([*argv, "-s", superd.socket, "status"], runs, env)
    floor = timed_runs([sys.executable, "-c", "pass"], runs, env)
    superd.stop()
    return status, floor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as folder:
        latencies = restart_latency(Superd(Path(folder), "bench-restart"), args.kills)
    with tempfile.TemporaryDirectory() as folder:
        status, floor = status_time(Superd(Path(folder), "bench-status"), args.runs)
    ms = 1000.0
    print(f"kill -9 -> replacement running ({args.kills} kills): "
          f"median {statistics.median(latencies) * ms:.1f} ms, "
          f"p95 {percentile(latencies, 0.95) * ms:.1f} ms")
    print(f"superctl status, 10 workers ({args.runs} runs): "
          f"median {statistics.median(status) * ms:.1f} ms, "
          f"p95 {percentile(status, 0.95) * ms:.1f} ms;"
          f" python -c pass median {statistics.median(floor) * ms:.1f} ms;"
          f" ratio {statistics.median(status) / statistics.median(floor):.2f}x")


if __name__ == "__main__":
    main()
