"""Benchmark: a stranger floods superd's notify socket.

Run on purpose, not in CI:  python tests/bench/notify_flood.py [--seconds 3]

A detached superd runs one `ready: notify` worker that waits, then sends
READY=1 in the middle of the flood. A process that is no worker sends
READY=1 datagrams to the notify socket as fast as the socket takes them for
SECONDS. Reported: datagrams sent, superd's CPU over the flood, how much its
log grew, ping round trips during the flood, and when the worker got RUNNING.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from support import Client, Superd, become_subreaper, reap_adopted  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PY = sys.executable


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def flood(address: str, seconds: float) -> int:
    """READY=1 datagrams to address for `seconds`; how many went out."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    target = "\0" + address[1:] if address.startswith("@") else address
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendto(b"READY=1", target)
            sent += 1
        except (TimeoutError, BlockingIOError):
            pass
    sock.close()
    return sent


def pings(path: str, stop: threading.Event, times: list[float], running: list[float]) -> None:
    """Ping back to back (with a pause); note when svc is first seen RUNNING."""
    while not stop.is_set():
        began = time.perf_counter()
        client = Client(path)
        try:
            client.call("ping")
            times.append(time.perf_counter() - began)
            if not running and client.result("status", {"names": ["svc"]})[0]["state"] \
                    == "RUNNING":
                running.append(time.monotonic())
        finally:
            client.close()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as name:
        superd = Superd(Path(name), "bench-notify-flood")
        ready_after = args.seconds / 2
        notifier = (f"import os, socket, time; time.sleep({ready_after!r}); "
                    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                    "a = os.environ['NOTIFY_SOCKET']; "
                    "s.sendto(b'READY=1', '\\0' + a[1:] if a[0] == '@' else a); "
                    "time.sleep(600)")
        superd.start({"svc": {"command": [PY, "-c", notifier], "ready": "notify",
                              "start_timeout": "60s"}})
        try:
            row = superd.wait_state("svc", "STARTING")
            address = Path(superd.socket + ".notify")
            log = superd.folder / "log" / "superd.log"
            pid = superd.pid or 0
            size, cpu, began = log.stat().st_size, cpu_seconds(pid), time.monotonic()
            stop, times, running_at = threading.Event(), [], []
            pinger = threading.Thread(target=pings,
                                      args=(superd.socket, stop, times, running_at))
            pinger.start()
            sent = flood(str(address), args.seconds)
            elapsed, used = time.monotonic() - began, cpu_seconds(pid) - cpu
            stop.set()
            pinger.join()
            superd.wait_state("svc", "RUNNING", timeout=30)
            grown = log.stat().st_size - size
            print(f"flood of {args.seconds:g}s: {sent} datagrams sent "
                  f"({sent / elapsed:.0f}/s)")
            print(f"superd CPU: {used:.2f} s ({used / elapsed:.0%} of a core); "
                  f"log grew {grown / 1024:.1f} KiB")
            print(f"ping during the flood: median {statistics.median(times) * 1000:.1f} ms, "
                  f"max {max(times) * 1000:.1f} ms over {len(times)}")
            seen = f"{running_at[0] - began:.2f}s in" if running_at else "after the flood"
            print(f"the worker's READY=1, sent about {ready_after:g}s into the flood: "
                  f"RUNNING seen {seen} (pid {row['pid']})")
        finally:
            superd.stop()
            reap_adopted()


if __name__ == "__main__":
    main()
