"""Benchmark: what each output option costs against the splice fast path.

Run on purpose, not in CI:  python tests/bench/log_options.py [--mb 200] [--repeat 3]

One worker writes MB megabytes of 80-byte lines to stdout (`yes LINE | head
-c`); a foreground superd captures them with each setting in turn,
interleaved over the repeats so a noisy neighbour hurts them alike:

- plain: the default (splice from pipe to file, no copy through Python);
- timestamps: `timestamps: true` (read, stamp every line, write);
- console: `console: true` (the file, and each line prefixed on superd's
  stdout, here a file);
- console only: `file: false, console: true`.

Throughput is MB over the time from `start` to the worker's exit (its last
bytes are then in the pipe, which superd drains before it reports the
exit); daemon CPU is its utime+stime over the same span.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from support import Superd, become_subreaper, reap_adopted, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
LINE = "x" * 79  # with its newline, 80 bytes
VARIANTS = {
    "plain": {},
    "timestamps": {"timestamps": True},
    "console": {"console": True},
    "console only": {"file": False, "console": True},
}


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def one_run(folder: Path, mb: int, stdout: dict[str, object]) -> tuple[float, float]:
    os.sync()  # the last run's file is written back now, not during this one
    folder.mkdir()
    superd = Superd(folder, "bench-log-options")
    flood = {"command": ["sh", "-c", f"yes {LINE} | head -c {mb}M"], "autostart": False,
             "startsecs": 0, "autorestart": "never", "stdout": {"maxbytes": 0, **stdout}}
    superd.write_config({"flood": flood})
    with (folder / "console").open("wb") as console:
        daemon = subprocess.Popen([sys.executable, "-m", "superd", "--foreground", "-c",
                                   str(superd.config_path)], env=superd.env, stdout=console,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(superd.socket) and superd.call("ping"))
        before, began = cpu_seconds(daemon.pid), time.perf_counter()
        superd.call("start", {"names": ["flood"]})
        superd.wait_state("flood", "EXITED", timeout=600)
        elapsed, cpu = time.perf_counter() - began, cpu_seconds(daemon.pid) - before
    finally:
        daemon.terminate()
        daemon.wait(60)
        reap_adopted()
    for path in folder.glob("log/*.log"):
        path.unlink()
    (folder / "console").unlink()
    return mb / elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=list(VARIANTS), action="append",
                        help="measure this setting only (repeatable; default: all)")
    args = parser.parse_args()
    become_subreaper()
    chosen = {name: VARIANTS[name] for name in args.only or VARIANTS}
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    cpus: dict[str, list[float]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as name:
        for run in range(args.repeat):
            for index, (variant, stdout) in enumerate(chosen.items()):
                rate, cpu = one_run(Path(name) / f"{run}-{index}", args.mb, stdout)
                rates[variant].append(rate)
                cpus[variant].append(cpu)
    plain_rate, plain_cpu = statistics.median(rates["plain"]), statistics.median(cpus["plain"])
    print(f"{args.mb} MB of 80-byte lines; medians of {args.repeat} runs")
    print(f"{'stdout setting':<16}{'MB/s':>8}{'x plain':>9}{'daemon CPU-s':>14}{'x plain':>9}")
    for variant in chosen:
        rate, cpu = statistics.median(rates[variant]), statistics.median(cpus[variant])
        print(f"{variant:<16}{rate:>8.0f}{rate / plain_rate:>9.2f}{cpu:>14.2f}"
              f"{cpu / max(plain_cpu, 0.01):>9.1f}")
    print(f"all runs, MB/s: {rates}; CPU-s: {cpus}")


if __name__ == "__main__":
    main()
