"""Strangers on the notify socket, through a real daemon: a flood from a
process that is no worker costs a few percent of a core and a line a second
in the log, and a real worker's READY=1 sent during it still counts."""

from __future__ import annotations

import array
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from support import Superd, wait_for

PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def flood(address: str, seconds: float, kind: str) -> int:
    """Datagrams to address for `seconds` (READY=1, oversized, or carrying an fd)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    payload = b"READY=1\n" + b"x" * 60_000 if kind == "oversized" else b"READY=1"
    passed = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]).tobytes())] \
        if kind == "fds" else []
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendmsg([payload], passed, 0, address)
            sent += 1
        except (TimeoutError, BlockingIOError):
            pass
    sock.close()
    return sent


def test_a_stranger_flooding_the_notify_socket_costs_little(superd: Superd) -> None:
    ready_after = 1.5
    notifier = (f"import os, socket, time; time.sleep({ready_after}); "
                "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(600)")
    superd.start({"svc": {"command": [PY, "-c", notifier], "ready": "notify",
                          "start_timeout": "60s"}})
    superd.wait_state("svc", "STARTING")
    pid = superd.pid
    assert pid is not None
    log = superd.folder / "log" / "superd.log"
    address = superd.socket + ".notify"
    size, cpu, fds = log.stat().st_size, cpu_seconds(pid), len(os.listdir(f"/proc/{pid}/fd"))
    pings: list[float] = []
    running_at: list[float] = []
    stop = threading.Event()

    def ping_loop() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            superd.call("ping")
            pings.append(time.perf_counter() - began)
            if not running_at and superd.status("svc")["state"] == "RUNNING":
                running_at.append(time.monotonic())
            stop.wait(0.02)

    pinger = threading.Thread(target=ping_loop)
    began = time.monotonic()
    pinger.start()
    try:
        sent = flood(address, 1.0, "READY")
        sent += flood(address, 0.5, "oversized") + flood(address, 0.5, "fds")
        sent += flood(address, 1.0, "READY")
    finally:
        stop.set()
        pinger.join()
    elapsed, used = time.monotonic() - began, cpu_seconds(pid) - cpu
    assert sent > 1000
    assert running_at and running_at[0] - began < ready_after + 1.0  # honoured during it
    assert statistics.median(pings) < 0.1
    assert used < 0.5 * elapsed, f"superd used {used:.2f}s of CPU in {elapsed:.2f}s"
    # The fds that came with datagrams were closed at once.
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds + 2
    # One summary line a second, with the count and the sender.
    wait_for(lambda: log.read_text().count("notify socket: ignored") >= 3)
    grown = log.stat().st_size - size
    assert grown < 50_000
    summaries = [line for line in log.read_text().splitlines()
                 if "notify socket: ignored" in line]
    assert len(summaries) <= elapsed + 2
    assert f"senders that are no worker (pids {os.getpid()})" in summaries[0]
