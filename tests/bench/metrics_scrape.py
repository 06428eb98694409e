"""Benchmark: what a metrics scrape costs beside a status call.

Run on purpose, not in CI:  python tests/bench/metrics_scrape.py [--instances 1000]

A detached superd runs INSTANCES sleeping instances and serves
`daemon.metrics`. Measured in one run, each call made after the sampler's
0.5 s window so that every one reads /proc afresh: the round trip of the
wire `ping` (the floor), `status` of every instance, the wire `metrics`, and
a GET /metrics over HTTP; then their ratios to `status`.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from support import Client, Superd, become_subreaper, reap_adopted, wait_for  # noqa: E402

FRESH = 0.6  # past resources.FRESH_FOR


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(port: int) -> int:
    """GET /metrics; the bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        size = 0
        while chunk := sock.recv(1 << 16):
            size += len(chunk)
        return size


def median_ms(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        time.sleep(FRESH)
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as name:
        superd = Superd(Path(name), "bench-metrics-scrape")
        port = free_port()
        superd.start({"w": {"command": ["sleep", "3600"], "numprocs": args.instances,
                            "startsecs": 0, "stdout": {"file": False},
                            "stderr": {"file": False}}},
                     daemon={"metrics": f"tcp://127.0.0.1:{port}"})
        try:
            client = Client(superd.socket, timeout=60)
            wait_for(lambda: all(r["state"] == "RUNNING" for r in client.result("status")),
                     timeout=120, what="every instance RUNNING")
            text = client.result("metrics")["text"]
            figures = {
                "ping (floor)": median_ms(lambda: client.result("ping"), args.runs),
                "status": median_ms(lambda: client.result("status"), args.runs),
                "metrics (wire)": median_ms(lambda: client.result("metrics"), args.runs),
                "GET /metrics": median_ms(lambda: http_get(port), args.runs),
            }
            client.close()
            print(f"{args.instances} instances; metrics text {len(text)} bytes, "
                  f"{text.count(chr(10))} lines; medians of {args.runs}:")
            for what, ms in figures.items():
                print(f"  {what:15} {ms:7.1f} ms  ({ms / figures['status']:.2f} x status)")
        finally:
            superd.stop()
            reap_adopted()


if __name__ == "__main__":
    main()
