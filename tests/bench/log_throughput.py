"""Benchmark: a worker writing 500 MB to stdout, through superd vs a plain file vs supervisord.

Run on purpose, not in CI:  python tests/bench/log_throughput.py [--mb 500]

Three ways of moving the same `head -c NM /dev/zero` into a file, in one run:
1. the shell redirecting it straight to the file (the floor);
2. superd capturing it (stdout maxbytes 0: no rotation);
3. supervisord 4.x, pip-installed into its own venv under a temp folder
   (startsecs=0, stdout_logfile_maxbytes=0).
Throughput counts from the first byte seen in the file to the last, so
neither daemon's start-up is timed; daemon CPU is utime+stime from
/proc/PID/stat around the transfer.  Then `status` round trips on superd's
socket, idle and while a worker floods stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from support import Client, Superd, become_subreaper, wait_for  # noqa: E402

MB = 1 << 20
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def time_transfer(path: Path, total: int, timeout: float = 600.0) -> float:
    """Seconds per byte-rate window: (bytes moved after the first seen) / elapsed -> MB/s."""
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"no output in {path}")
        time.sleep(0.001)
    began, first = time.perf_counter(), path.stat().st_size
    while path.stat().st_size < total:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} stuck at {path.stat().st_size} bytes")
        time.sleep(0.002)
    return (total - first) / MB / (time.perf_counter() - began)


def direct(folder: Path, mb: int) -> float:
    out = folder / "direct.log"
    shell = subprocess.Popen(["sh", "-c", f"head -c {mb}M /dev/zero > {out}"])
    rate = time_transfer(out, mb * MB)
    shell.wait()
    out.unlink()
    return rate


def cat_floor(folder: Path, mb: int) -> float:
    """CPU-s of `cat` copying the same bytes from a pipe into a file: the kernel's floor
    for any supervisor that captures a pipe into the page cache."""
    out = folder / "cat.log"
    head = subprocess.Popen(["head", "-c", f"{mb}M", "/dev/zero"], stdout=subprocess.PIPE)
    with out.open("wb") as sink:
        cat = subprocess.Popen(["cat"], stdin=head.stdout, stdout=sink)
    assert head.stdout is not None
    head.stdout.close()
    _, _, usage = os.wait4(cat.pid, 0)
    cat.returncode = 0
    head.wait()
    out.unlink()
    return usage.ru_utime + usage.ru_stime


def through_superd(folder: Path, mb: int) -> tuple[float, float]:
    folder.mkdir()
    superd = Superd(folder, "bench-logs")
    flood = {"command": ["head", "-c", f"{mb}M", "/dev/zero"], "autostart": False,
             "startsecs": 0, "autorestart": "never", "stdout": {"maxbytes": 0}}
    superd.start({"flood": flood})
    pid = superd.pid or 0
    before = cpu_seconds(pid)
    superd.call("start", {"names": ["flood"]})
    rate = time_transfer(superd.log_file("flood"), mb * MB)
    superd.wait_state("flood", "EXITED")
    cpu = cpu_seconds(pid) - before
    superd.stop()
    superd.log_file("flood").unlink()
    return rate, cpu


SUPERVISORD_CONF = """\
[unix_http_server]
file={folder}/supervisor.sock

[supervisord]
nodaemon=true
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{folder}/supervisor.sock

[program:flood]
command=head -c {mb}M /dev/zero
autostart=false
autorestart=false
startsecs=0
stdout_logfile={folder}/flood.log
stdout_logfile_maxbytes=0
stderr_logfile={folder}/flood.err
"""


def install_supervisord(folder: Path) -> Path:
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "supervisor>=4,<5"],
                   check=True)
    return venv / "bin"


def through_supervisord(folder: Path, bin_dir: Path, mb: int) -> tuple[float, float, str]:
    folder.mkdir()
    version = subprocess.run([str(bin_dir / "supervisord"), "--version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    conf = folder / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(folder=folder, mb=mb))
    daemon = subprocess.Popen([str(bin_dir / "supervisord"), "-c", str(conf)],
                              cwd=folder, env={k: v for k, v in os.environ.items()
                                               if k != "PYTHONPATH"})
    ctl = [str(bin_dir / "supervisorctl"), "-c", str(conf)]
    try:
        wait_for(lambda: subprocess.run([*ctl, "status"], capture_output=True).returncode
                 in (0, 3), what="supervisord to answer")
        before = cpu_seconds(daemon.pid)
        subprocess.Popen([*ctl, "start", "flood"], stdout=subprocess.DEVNULL)
        rate = time_transfer(folder / "flood.log", mb * MB)
        wait_for(lambda: "exited: flood" in (folder / "supervisord.log").read_text(),
                 what="supervisord to see the exit")
        cpu = cpu_seconds(daemon.pid) - before
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    return rate, cpu, version


def status_round_trips(folder: Path, runs: int) -> tuple[float, float]:
    folder.mkdir()
    superd = Superd(folder, "bench-status")
    flood = {"command": ["yes"], "autostart": False, "startsecs": 0,
             "stdout": {"maxbytes": "200MB", "backups": 1}}
    superd.start({"flood": flood, "idle": {"command": ["sleep", "600"], "startsecs": 0}})
    client = Client(superd.socket)

    def median_status() -> float:
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            client.result("status", {})
            times.append(time.perf_counter() - began)
            time.sleep(0.01)
        return statistics.median(times)

    idle = median_status()
    client.result("start", {"names": ["flood"]})
    wait_for(lambda: superd.log_file("flood").stat().st_size > 50 * MB, what="the flood")
    flooded = median_status()
    client.close()
    superd.stop()
    return idle, flooded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="transfers per contender")
    args = parser.parse_args()
    become_subreaper()
    rates: dict[str, list[float]] = {"direct": [], "superd": [], "supervisord": []}
    cpus: dict[str, list[float]] = {"superd": [], "supervisord": [], "cat": []}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        bin_dir = install_supervisord(folder)
        # Interleaved, so a noisy neighbour hurts every contender alike.
        for run in range(args.repeat):
            rates["direct"].append(direct(folder, args.mb))
            cpus["cat"].append(cat_floor(folder, args.mb))
            rate, cpu = through_superd(folder / f"superd{run}", args.mb)
            rates["superd"].append(rate)
            cpus["superd"].append(cpu)
            rate, cpu, version = through_supervisord(folder / f"supervisord{run}", bin_dir,
                                                     args.mb)
            rates["supervisord"].append(rate)
            cpus["supervisord"].append(cpu)
            shutil.rmtree(folder / f"supervisord{run}")
        idle, flooded = status_round_trips(folder / "status", args.runs)
    direct_rate, superd_rate, sup_rate = (statistics.median(rates[k]) for k in rates)
    superd_cpu, sup_cpu, cat_cpu = (statistics.median(cpus[k]) for k in cpus)
    print(f"each figure: median of {args.repeat} runs; all runs MB/s: {rates}, CPU-s: {cpus}")
    print(f"{args.mb} MB of `head -c {args.mb}M /dev/zero` on stdout into a file:")
    print(f"{'path':<22}{'MB/s':>8}{'daemon CPU-s':>14}")
    print(f"{'direct to file':<22}{direct_rate:>8.0f}{'-':>14}")
    print(f"{'pipe | cat > file':<22}{'':>8}{cat_cpu:>14.2f}  (cat's CPU: the copy's floor)")
    print(f"{'superd':<22}{superd_rate:>8.0f}{superd_cpu:>14.2f}")
    print(f"{'supervisord ' + version:<22}{sup_rate:>8.0f}{sup_cpu:>14.2f}")
    print(f"superd / direct throughput: {superd_rate / direct_rate:.2f}")
    print(f"superd / supervisord throughput: {superd_rate / sup_rate:.2f} (target >= 1)")
    print(f"superd / supervisord daemon CPU: {superd_cpu / max(sup_cpu, 0.01):.3f}"
          f" (target <= 0.25); superd / cat floor: {superd_cpu / max(cat_cpu, 0.01):.2f}")
    print(f"status round trip, median of {args.runs}: idle {idle * 1000:.2f} ms, "
          f"under a `yes` flood {flooded * 1000:.2f} ms, ratio {flooded / idle:.1f}x"
          " (target <= 10)")


if __name__ == "__main__":
    main()
