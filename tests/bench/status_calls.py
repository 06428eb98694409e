"""Benchmark: the raw `status` round trip, with N workers, with and without
many unrelated processes on the host.

Run on purpose, not in CI:
    python tests/bench/status_calls.py [--workers 10,1000] [--calls 500] [--extra 2000]

For each N: one daemon runs a worker of N `sleep 600` instances.  On one
connection, --calls status frames are sent one after the other, each timed
from sending the frame to having read the whole reply frame (its JSON is not
decoded: that is the client's cost); then --cold calls spaced --gap seconds
apart, so that no figure the daemon caches can be reused.  Then --extra
`sleep` processes that have nothing to do with superd are started on the
host and the same is measured again.  Daemon CPU is utime+stime from
/proc/PID/stat around the back-to-back calls, divided by their number.

To compare two versions in one session, run the script with the python of
a venv that has the other version installed (the daemon is started with
the same interpreter).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from superd.protocol import HEADER  # noqa: E402
from support import Superd, become_subreaper, reap_adopted, request_frame, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
MS = 1000.0


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        assert chunk, "daemon closed the connection"
        data += chunk
    return bytes(data)


def raw_status(sock: socket.socket) -> bytes:
    """One round trip: the request frame out, the whole reply frame in (not decoded)."""
    sock.sendall(request_frame(1, "status"))
    _, _, _, length = HEADER.unpack(receive_exactly(sock, HEADER.size))
    return receive_exactly(sock, length)


def round_trips(sock: socket.socket, calls: int, gap: float = 0.0) -> list[float]:
    times = []
    for _ in range(calls):
        if gap:
            time.sleep(gap)
        began = time.perf_counter()
        raw_status(sock)
        times.append(time.perf_counter() - began)
    return times


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(word) for word in text.split()]


@contextmanager
def host_processes(count: int) -> Iterator[None]:
    """`count` unrelated sleeps on the host, in a group of their own."""
    if not count:
        yield
        return
    shell = subprocess.Popen(["sh", "-c", f"i=0; while [ $i -lt {count} ]; do "
                              "sleep 600 & i=$((i+1)); done; wait"], start_new_session=True)
    try:
        wait_for(lambda: len(children_of(shell.pid)) >= count, 120.0, "host processes")
        yield
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
        wait_for(lambda: not _group_alive(shell.pid), 60.0, "host processes to go")
        reap_adopted()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    reap_adopted()  # the sleeps, orphaned, were re-parented to us
    return True


def measure(superd: Superd, calls: int, cold: int, gap: float) -> str:
    daemon = superd.pid or 0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(superd.socket)
        assert b'"ok":true' in raw_status(sock)
        round_trips(sock, 20)  # warm up
        cpu_before = cpu_seconds(daemon)
        hot = round_trips(sock, calls)
        cpu_per_call = (cpu_seconds(daemon) - cpu_before) / calls
        spaced = round_trips(sock, cold, gap)
    finally:
        sock.close()
    line = (f"back-to-back median {statistics.median(hot) * MS:.3f} ms, "
            f"p95 {percentile(hot, 0.95) * MS:.3f} ms, "
            f"daemon CPU {cpu_per_call * MS:.3f} ms/call")
    if spaced:
        line += (f"; spaced {gap}s apart ({cold}) median {statistics.median(spaced) * MS:.3f}"
                 f" ms, max {max(spaced) * MS:.3f} ms")
    return line


def bench(workers: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        superd = Superd(Path(folder), f"bench-status-{workers}")
        try:
            superd.start({"w": {"command": ["sleep", "600"], "numprocs": workers,
                                "startsecs": "100ms"}})
            wait_for(lambda: all(r["state"] == "RUNNING" for r in superd.status()), 120.0,
                     "all RUNNING")
            for extra in (0, args.extra):
                with host_processes(extra):
                    hosted = len([e for e in os.listdir("/proc") if e.isdigit()])
                    result = measure(superd, args.calls, args.cold, args.gap)
                print(f"{workers} workers, {hosted} processes on the host: {result}",
                      flush=True)
        finally:
            superd.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="10,1000")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--gap", type=float, default=1.1)
    parser.add_argument("--extra", type=int, default=2000)
    args = parser.parse_args()
    become_subreaper()
    for workers in (int(n) for n in args.workers.split(",")):
        bench(workers, args)


if __name__ == "__main__":
    main()
