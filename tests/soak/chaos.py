"""Chaos soak: many workers, random kills, restarts, reloads and hostile
clients for a set time; then everything must be RUNNING again, with no
zombie, and the daemon's descriptor count and memory flat.

Run on purpose:  python tests/soak/chaos.py --seconds 300 [--workers 300]
CI runs a short version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from superd.protocol import HEADER, Kind, encode  # noqa: E402
from support import (  # noqa: E402
    DEADLINE,
    Client,
    Superd,
    become_subreaper,
    wait_for,
    zombie_children,
)

GROUP_SIZE = 30
MAX_IDLE_CLIENTS = 20
PIPELINED = 200


@dataclass
class Sample:
    elapsed: float
    fds: int
    rss_bytes: int
    zombies: int
    kills: int
    restarts: int
    running: int


@dataclass
class Report:
    workers: int
    seconds: float
    kills: int = 0
    user_restarts: int = 0
    reloads: int = 0
    abandoned: int = 0
    pipelined: int = 0
    samples: list[Sample] = field(default_factory=list)
    start: Sample | None = None
    end: Sample | None = None

    def lines(self) -> list[str]:
        assert self.start is not None and self.end is not None
        out = [f"{self.workers} workers, {self.seconds:.0f} s of chaos: {self.kills} kills, "
               f"{self.user_restarts} restarts asked, {self.reloads} reloads, "
               f"{self.abandoned} abandoned connections, {self.pipelined} unread pipelines",
               "  elapsed    fds     rss  zombies  kills  restarts  running"]
        for sample in [self.start, *self.samples, self.end]:
            out.append(f"  {sample.elapsed:7.1f}  {sample.fds:5d}  {sample.rss_bytes >> 20:4d}M"
                       f"  {sample.zombies:7d}  {sample.kills:5d}  {sample.restarts:8d}"
                       f"  {sample.running:7d}")
        return out


def workers_config(groups: int, generation: dict[str, int]) -> dict[str, Any]:
    return {f"g{index}": {"command": ["sleep", "100000"], "numprocs": GROUP_SIZE,
                          "startsecs": "100ms", "stoptimeout": "2s",
                          "backoff": {"initial": "50ms", "max": "500ms"},
                          "startretries": 1000,
                          "environment": {"GENERATION": str(generation.get(f"g{index}", 0))}}
            for index in range(groups)}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Chaos:
    def __init__(self, superd: Superd, groups: int, seed: int) -> None:
        self.superd = superd
        self.groups = groups
        self.rng = random.Random(seed)
        self.generation: dict[str, int] = {}
        self.idle: list[socket.socket] = []
        self.control: Client | None = None
        self.report = Report(workers=groups * GROUP_SIZE, seconds=0.0)
        self.began = time.monotonic()

    def start(self) -> None:
        self.superd.start(workers_config(self.groups, self.generation))
        self.control = self.superd.client()
        self.settle()
        self.report.start = self.sample()

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        assert self.control is not None, "start() first"
        return self.control.result(cmd, args)

    def rows(self) -> list[dict[str, Any]]:
        return self.call("status")  # type: ignore[no-any-return]

    def sample(self) -> Sample:
        pid = self.superd.pid or 0
        rows = self.rows()
        return Sample(time.monotonic() - self.began, fd_count(pid), rss_bytes(pid),
                      len(zombie_children(pid)), self.report.kills,
                      sum(row["restarts"] for row in rows),
                      sum(row["state"] == "RUNNING" for row in rows))

    def settle(self) -> None:
        total = self.groups * GROUP_SIZE
        wait_for(lambda: sum(r["state"] == "RUNNING" for r in self.rows()) == total,
                 DEADLINE * 3, f"all {total} workers RUNNING")

    # -- the faults ---------------------------------------------------------
    def kill_some(self) -> None:
        running = [row for row in self.rows() if row["pid"] and row["state"] == "RUNNING"]
        for row in self.rng.sample(running, min(len(running), self.rng.randint(1, 5))):
            try:
                os.kill(row["pid"], signal.SIGKILL)
                self.report.kills += 1
            except ProcessLookupError:
                pass

    def restart_one(self) -> None:
        name = f"g{self.rng.randrange(self.groups)}:{self.rng.randrange(GROUP_SIZE)}"
        self.call("restart", {"names": [name], "wait": False})
        self.report.user_restarts += 1

    def reload(self) -> None:
        if self.rng.random() < 0.5:
            group = f"g{self.rng.randrange(self.groups)}"
            self.generation[group] = self.generation.get(group, 0) + 1
        self.superd.write_config(workers_config(self.groups, self.generation))
        self.call("reload")
        self.report.reloads += 1

    def abandon_connection(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.superd.socket)
        choice = self.rng.random()
        if choice < 0.4:
            sock.close()  # connect and go
        else:
            # Half a frame, then silence.
            sock.sendall(encode(Kind.REQUEST, {"id": 1, "cmd": "ping", "args": {}})[:HEADER.size
                                                                                    + 3])
            self.idle.append(sock)
            if len(self.idle) > MAX_IDLE_CLIENTS:
                self.idle.pop(0).close()
        self.report.abandoned += 1

    def pipeline_unread(self) -> None:
        client = Client(self.superd.socket)
        frames = b"".join(encode(Kind.REQUEST, {"id": i, "cmd": "status", "args": {}})
                          for i in range(PIPELINED))
        client.sock.setblocking(False)
        try:
            client.sock.send(frames)
        except BlockingIOError:
            pass
        client.close()
        self.report.pipelined += 1

    # -- running ------------------------------------------------------------
    def run(self, seconds: float) -> Report:
        actions = [self.kill_some] * 6 + [self.restart_one] * 3 + [self.reload] + \
            [self.abandon_connection] * 3 + [self.pipeline_unread] * 2
        deadline = time.monotonic() + seconds
        interval = max(1.0, seconds / 30)
        next_sample = time.monotonic() + interval
        while time.monotonic() < deadline:
            # Every kind of fault in each round, in a random order.
            for action in self.rng.sample(actions, len(actions)):
                action()
                time.sleep(self.rng.uniform(0.0, 0.05))  # pacing of the chaos, not a wait
                if time.monotonic() >= next_sample:
                    self.report.samples.append(self.sample())
                    next_sample = time.monotonic() + interval
        self.report.seconds = seconds
        return self.finish()

    def finish(self) -> Report:
        for sock in self.idle:
            sock.close()
        self.idle.clear()
        self.settle()
        pid = self.superd.pid or 0
        wait_for(lambda: not zombie_children(pid), DEADLINE, "no zombies")
        assert self.report.start is not None
        start_fds = self.report.start.fds
        # Closed clients are noticed by the daemon as it reads their EOF.
        wait_for(lambda: fd_count(pid) <= start_fds, DEADLINE, "descriptors back to start")
        self.report.end = self.sample()
        if self.control is not None:
            self.control.close()
        return self.report


def run_soak(superd: Superd, seconds: float, workers: int, seed: int) -> Report:
    chaos = Chaos(superd, max(1, workers // GROUP_SIZE), seed)
    chaos.start()
    return chaos.run(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="superd-soak-") as folder:
        superd = Superd(Path(folder), uuid.uuid4().hex)
        try:
            report = run_soak(superd, args.seconds, args.workers, args.seed)
        finally:
            superd.stop()
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
