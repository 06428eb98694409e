"""CPU and RSS in `status`, end to end: a real daemon, real process groups,
and a trace of what the daemon opens under /proc."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from superd.resources import FRESH_FOR, PAGE_SIZE
from support import DEADLINE, Superd, wait_for

PY = sys.executable
# A busy loop whose parent (a subshell) exits at once: the loop is orphaned,
# re-parented to superd (a subreaper), and stays in the worker's group.
ORPHANED_BUSY = f"({PY} -c 'while True: pass' &); exec sleep 600"


def worker(script: str) -> dict[str, object]:
    return {"command": ["sh", "-c", script], "startsecs": "200ms"}


def group_of(pgid: int) -> dict[int, tuple[str, int]]:
    """The test's own scan of /proc: pid -> (state, ppid) of each process in the group."""
    members = {}
    for entry in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            members[int(entry)] = (fields[0], int(fields[1]))
    return members


def rss_of(pids: Iterable[int]) -> int:
    return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
               for pid in pids)


def running_rows(superd: Superd) -> dict[str, dict[str, Any]] | None:
    rows = {row["name"]: row for row in superd.status()}
    return rows if all(row["state"] == "RUNNING" for row in rows.values()) else None


def test_group_members_are_counted_including_an_orphan(superd: Superd) -> None:
    superd.start({"pair": worker("sleep 600 & sleep 600"), "orphan": worker(ORPHANED_BUSY)})
    rows = wait_for(lambda: running_rows(superd), what="both RUNNING")
    pair, orphan = rows["pair"]["pid"], rows["orphan"]["pid"]
    members = wait_for(lambda: len(group_of(pair)) == 3 and group_of(pair), what="sh, 2 sleeps")
    busy = wait_for(lambda: [pid for pid, (state, ppid) in group_of(orphan).items()
                             if pid != orphan and ppid == superd.pid], what="the orphan")
    assert len(busy) == 1  # the busy loop, adopted by superd

    def counted() -> dict[str, dict[str, Any]] | None:
        rows = {row["name"]: row for row in superd.status()}
        whole = rows["pair"]["rss_bytes"] == rss_of(members) \
            and rows["orphan"]["rss_bytes"] == rss_of(group_of(orphan))
        return rows if whole and rows["orphan"]["cpu_percent"] > 50 else None

    rows = wait_for(counted, what="every member's RSS and the orphan's CPU")
    assert rows["pair"]["cpu_percent"] < 5


def test_figures_are_reused_within_the_window_then_read_again(superd: Superd) -> None:
    grow = "import time\nb = []\nfor _ in range(1000): b.append(bytes(200_000)); time.sleep(0.02)"
    superd.start({"grow": worker(f"exec {PY} -c '{grow}'")})
    wait_for(lambda: running_rows(superd), what="RUNNING")
    client = superd.client()
    try:
        time.sleep(FRESH_FOR)  # nothing fresh: this status reads /proc
        began = time.monotonic()
        first = client.result("status")[0]
        time.sleep(FRESH_FOR / 5)  # it grew by some 1 MB meanwhile
        again = client.result("status")[0]
        within = time.monotonic() - began < FRESH_FOR
        time.sleep(FRESH_FOR)
        later = client.result("status")[0]
    finally:
        client.close()
    assert again["rss_bytes"] == first["rss_bytes"] or not within
    assert again["uptime"] > first["uptime"]  # the rest of the row is live
    assert later["rss_bytes"] > first["rss_bytes"]  # read again: it grows 10 MB/s


@contextmanager
def unrelated_processes(count: int) -> Iterator[list[int]]:
    """Processes on the host that superd has nothing to do with."""
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
    try:
        yield [sleeper.pid for sleeper in sleepers]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
        for sleeper in sleepers:
            sleeper.wait()


@contextmanager
def traced_opens(pid: int, log: Path) -> Iterator[None]:
    """strace every call that takes a path, by pid and its threads, while the block runs."""
    tracer = subprocess.Popen(["strace", "-f", "-e", "trace=%file", "-o", str(log),
                               "-p", str(pid)], stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stderr is not None
        first = tracer.stderr.readline()
        assert "attached" in first, first
        yield
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches, leaving the daemon running
        tracer.communicate(timeout=DEADLINE)


def proc_paths(log: Path) -> list[str]:
    return re.findall(r'"(/proc[^"]*)"', log.read_text())


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_status_opens_only_the_workers_proc_entries(superd: Superd) -> None:
    superd.start({"pair": worker("sleep 600 & sleep 600"), "orphan": worker(ORPHANED_BUSY),
                  "solo": {"command": ["sleep", "600"], "numprocs": 3}})
    rows = wait_for(lambda: running_rows(superd), what="all RUNNING")
    wait_for(lambda: len(group_of(rows["pair"]["pid"])) == 3, what="sh and 2 sleeps")
    wait_for(lambda: len(group_of(rows["orphan"]["pid"])) == 2, what="sleep and orphan")
    members = {pid for row in rows.values() for pid in group_of(row["pid"])}
    daemon = superd.pid
    log = superd.folder / "opens.trace"
    with unrelated_processes(50) as others, traced_opens(daemon or 0, log):
        time.sleep(FRESH_FOR)  # nothing fresh: the next status reads /proc
        assert all(row["rss_bytes"] for row in superd.status())
    paths = re.findall(r'"(/proc[^"]*)"', log.read_text())
    pids = {int(match[1]) for path in paths if (match := re.match(r"/proc/(\d+)/", path))}
    assert "/proc" not in paths and "/proc/" not in paths  # no listing of every process
    assert not pids & set(others)
    assert pids <= members, f"read beyond the workers' groups: {sorted(pids - members)}"
    assert pids == members, f"members not read: {sorted(members - pids)}"
    assert any(re.fullmatch(r"/proc/self/task/\d+/children", path) for path in paths)
