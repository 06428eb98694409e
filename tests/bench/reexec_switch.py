"""Benchmark: what a re-exec costs, with 10 and with 1000 workers.

Run on purpose, not in CI:  python tests/bench/reexec_switch.py [--runs 5]

For each size, a real detached daemon runs N `sleep` workers; each run is one
`superctl reexec`, timed as a whole command (the check of the installed
superd, the exec, until the new image answers `ping`), while a client pings
back to back: its longest wait is how long the daemon did not answer (the
switch). The floor, in the same run, is the start of one
`python -m superd --can-resume FORMAT` (Python plus importing superd): a
re-exec starts that twice, the check and the new image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from superd.handover import FORMAT  # noqa: E402
from support import Client, Superd, become_subreaper, reap_adopted, wait_for  # noqa: E402


class LongestWait(threading.Thread):
    """Pings back to back; keeps the longest time one ping took to be answered."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path, self.longest, self.stopping = path, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            began = time.perf_counter()
            try:
                client = Client(self.path)
                try:
                    client.send("ping")
                    answered = client.receive() is not None
                finally:
                    client.close()
            except OSError:
                answered = False
            if answered:
                self.longest = max(self.longest, time.perf_counter() - began)

    def finish(self) -> float:
        self.stopping.set()
        self.join(60)
        return self.longest


def floor_runs(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "superd", "--can-resume", str(FORMAT)],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return times


def reexec_runs(superd: Superd, runs: int) -> tuple[list[float], list[float]]:
    totals, gaps = [], []
    for _ in range(runs):
        watcher = LongestWait(superd.socket)
        watcher.start()
        time.sleep(0.2)  # the watcher's pings are going
        began = time.perf_counter()
        done = superd.ctl("reexec")
        totals.append(time.perf_counter() - began)
        time.sleep(0.2)
        gaps.append(watcher.finish())
        assert done.returncode == 0, done.stderr
    return totals, gaps


def measure(size: int, runs: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as folder:
        superd = Superd(Path(folder), f"reexec-bench-{size}")
        superd.start({"idle": {"command": ["sleep", "600"], "startsecs": 0, "numprocs": size}})
        try:
            wait_for(lambda: all(row["state"] == "RUNNING" for row in superd.status()),
                     timeout=120, what="every worker RUNNING")
            pids = [row["pid"] for row in superd.status()]
            totals, gaps = reexec_runs(superd, runs)
            assert [row["pid"] for row in superd.status()] == pids, "a worker was touched"
        finally:
            superd.stop()
            reap_adopted()
    return {"total": totals, "gap": gaps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    become_subreaper()
    floor = statistics.median(floor_runs(args.runs))
    print(f"floor: python -m superd --can-resume, median {floor * 1000:.0f} ms")
    for size in (10, 1000):
        figures = measure(size, args.runs)
        total, gap = (statistics.median(figures[key]) for key in ("total", "gap"))
        worst = max(figures["gap"])
        print(f"{size:>5} workers: superctl reexec median {total * 1000:.0f} ms "
              f"({total / floor:.2f}x floor), longest unanswered ping median "
              f"{gap * 1000:.0f} ms ({gap / floor:.2f}x floor), max {worst * 1000:.0f} ms")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
