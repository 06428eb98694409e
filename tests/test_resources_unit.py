"""Unit tests for superd.resources: /proc parsing, finding a process group
without scanning /proc, CPU arithmetic, and reusing a fresh reading."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from superd.resources import (
    CLOCK_TICKS,
    PAGE_SIZE,
    ProcessGroups,
    ProcFiles,
    ResourceSampler,
    Sample,
    boot_seconds,
    cpu_percent,
    parse_children,
    parse_stat,
    parse_statm_rss,
)
from support import reap_adopted, wait_for

# A real line, with a command name that holds a space and a ')'.
STAT = (b"4242 (my worker) x) S 1 4240 4240 0 -1 4194560 120 0 0 0 "
        b"150 50 3 1 20 0 7 0 987654 12345678 300 18446744073709551615 "
        b"1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")


def test_parse_stat_fields() -> None:
    stat = parse_stat(STAT)
    assert stat.pid == 4242
    assert stat.pgrp == 4240
    assert stat.cpu_ticks == 200  # utime 150 + stime 50; children's times not counted
    assert stat.threads == 7
    assert stat.start_ticks == 987654


def test_parse_statm_and_children() -> None:
    assert parse_statm_rss(b"5000 1234 300 10 0 400 0\n") == 1234 * PAGE_SIZE
    assert parse_children(b"12 13 ") == [12, 13]
    assert parse_children(b"") == []


def test_cpu_percent() -> None:
    assert cpu_percent(Sample(1, 1.0, 10.0), Sample(1, 1.5, 11.0)) == 50.0
    assert cpu_percent(Sample(1, 2.0, 10.0), Sample(1, 1.0, 11.0)) == 0.0  # a member left
    assert cpu_percent(Sample(1, 1.0, 10.0), Sample(1, 2.0, 10.0)) == 0.0


@dataclass
class Fake:
    """One process of a fake /proc."""

    ppid: int
    pgrp: int
    ticks: int = 0
    pages: int = 1
    threads: list[int] = field(default_factory=list)  # tids besides the pid itself


SUPERD = 1  # the fake superd: its children are listed under self/


def fake_proc(root: Path, processes: dict[int, Fake]) -> None:
    """stat, statm and each thread's children file; superd's under self/ too."""
    started = int((boot_seconds() - 100) * CLOCK_TICKS)  # 100 s ago
    tids = {pid: [pid, *process.threads] for pid, process in processes.items()}
    children: dict[int, list[int]] = {SUPERD: []}
    for pid, process in processes.items():
        children.setdefault(process.ppid, []).append(pid)
    for pid, process in processes.items():
        folder = root / str(pid)
        fields = ["S", str(process.ppid), str(process.pgrp)] + ["0"] * 8
        fields += [str(process.ticks), "0", "0", "0", "20", "0", str(len(tids[pid])), "0"]
        fields += [str(started)] + ["0"] * 20
        folder.mkdir()
        (folder / "stat").write_text(f"{pid} (w) " + " ".join(fields) + "\n")
        (folder / "statm").write_text(f"9 {process.pages} 0 0 0 0 0\n")
        # A child forked by a thread is listed under that thread: put the
        # children under the last thread.
        for tid in tids[pid]:
            (folder / "task" / str(tid)).mkdir(parents=True)
            mine = children.get(pid, []) if tid == tids[pid][-1] else []
            (folder / "task" / str(tid) / "children").write_text(
                "".join(f"{child} " for child in mine))
    (root / "self" / "task" / str(SUPERD)).mkdir(parents=True)
    (root / "self" / "task" / str(SUPERD) / "children").write_text(
        "".join(f"{child} " for child in children[SUPERD]))


class WatchedProc(ProcFiles):
    """Records every path read; fails the test on a process it must not touch."""

    def __init__(self, root: str, forbidden: set[int]) -> None:
        super().__init__(root)
        self.forbidden = {str(pid) for pid in forbidden}
        self.paths: list[str] = []

    def read(self, path: str, whole: bool = False) -> bytes | None:
        assert path.split("/")[0] not in self.forbidden, f"read {path}"
        self.paths.append(path)
        return super().read(path, whole)

    def tasks(self, pid: str) -> list[str]:
        assert pid not in self.forbidden, f"listed {pid}/task"
        self.paths.append(f"{pid}/task")
        return super().tasks(pid)


# Worker 10: a child 11 and grandchild 12 in its group; 11 also has a child
# 13 that made a group of its own, and 13's child 14.  30 was a grandchild
# of 10 whose parent died: superd adopted it, and its child 31.  Worker 20
# has two threads, and a child forked by the second.  50 is not yet a group
# leader; 40 is superd's child in another group (a probe, say); 70 is
# another worker's leader; 98 and 99 are the rest of the host.
HOST = {
    10: Fake(SUPERD, 10, ticks=100, pages=5), 11: Fake(10, 10, ticks=300, pages=7),
    12: Fake(11, 10, pages=2), 13: Fake(11, 13, ticks=999, pages=999),
    14: Fake(13, 10, ticks=999, pages=999),
    30: Fake(SUPERD, 10, ticks=40, pages=3), 31: Fake(30, 10, pages=4),
    20: Fake(SUPERD, 20, ticks=50, pages=1, threads=[21]), 22: Fake(20, 20, pages=1),
    50: Fake(SUPERD, 1), 40: Fake(SUPERD, 77), 70: Fake(SUPERD, 70),
    98: Fake(0, 98, ticks=999, pages=999), 99: Fake(98, 10, ticks=999, pages=999),
}


def test_groups_are_found_from_their_leaders_and_superds_orphans(tmp_path: Path) -> None:
    fake_proc(tmp_path, HOST)
    files = WatchedProc(str(tmp_path), forbidden={14, 70, 98, 99})
    groups = ProcessGroups(files, is_leader={10, 20, 50, 70}.__contains__)
    found = groups.find({10, 20, 50, 60})
    assert sorted(m.pid for m in found[10]) == [10, 11, 12, 30, 31]
    assert found[10][0].pid == 10  # the leader first
    assert sorted(m.pid for m in found[20]) == [20, 22]  # found under thread 21
    assert set(found) == {10, 20}  # 50 leads no group yet; 60 is gone
    assert "13/stat" in files.paths  # read (a child of 11), then left out with its subtree
    assert "70/stat" not in files.paths  # another worker's leader is no orphan


def test_sampler_sums_the_group_and_reads_no_one_else(tmp_path: Path) -> None:
    fake_proc(tmp_path, HOST)
    files = WatchedProc(str(tmp_path), forbidden={14, 70, 98, 99})
    sampler = ResourceSampler(files, is_leader={10, 20, 50, 70}.__contains__)
    figures = sampler.measure({"a": 10, "b": 20, "early": 50, "gone": 60})
    assert figures["a"][1] == (5 + 7 + 2 + 3 + 4) * PAGE_SIZE
    # The first reading: the CPU time since the leader started, 100 s ago.
    assert figures["a"][0] == pytest.approx(440 / CLOCK_TICKS, abs=0.2)
    assert figures["b"][1] == 2 * PAGE_SIZE
    assert figures["early"] == figures["gone"] == (None, None)
    assert set(sampler.readings) == {"a", "b"}


def measured_once(tmp_path: Path, fresh_for: float) \
        -> tuple[WatchedProc, ResourceSampler, dict[str, tuple[float | None, int | None]]]:
    """A sampler on a fake /proc after one reading of a and b, its reads forgotten."""
    fake_proc(tmp_path, HOST)
    files = WatchedProc(str(tmp_path), forbidden=set())
    sampler = ResourceSampler(files, fresh_for=fresh_for)
    first = sampler.measure({"a": 10, "b": 20})
    files.paths.clear()
    return files, sampler, first


def test_a_fresh_reading_is_reused_without_reading_proc(tmp_path: Path) -> None:
    files, sampler, first = measured_once(tmp_path, 60.0)
    assert sampler.measure({"a": 10, "b": 20}) == first
    assert files.paths == []
    sampler.measure({"a": 10, "b": 22})  # b has a new process: only b is read
    assert files.paths and all(not path.startswith("10/") for path in files.paths)


def test_a_stale_reading_is_the_base_of_the_next_cpu_share(tmp_path: Path) -> None:
    fake_proc(tmp_path, HOST)
    sampler = ResourceSampler(ProcFiles(str(tmp_path)), fresh_for=0.0)
    sampler.measure({"b": 20})
    (tmp_path / "20" / "stat").write_text(
        (tmp_path / "20" / "stat").read_text().replace(" 50 0 0 0 20 ", " 60050 0 0 0 20 "))
    cpu, _ = sampler.measure({"b": 20})["b"]
    assert cpu is not None and cpu > 1000  # 600 s of CPU in a few ms: not since start


def test_readings_of_processes_no_longer_workers_are_forgotten(tmp_path: Path) -> None:
    fake_proc(tmp_path, HOST)
    leaders = {10, 20}
    sampler = ResourceSampler(ProcFiles(str(tmp_path)), is_leader=leaders.__contains__,
                              fresh_for=0.0)
    sampler.measure({"a": 10, "b": 20})
    sampler.measure({"b": 20})  # a status of one instance keeps the others' readings
    assert set(sampler.readings) == {"a", "b"}
    leaders.discard(10)  # a's process was reaped
    sampler.measure({"b": 20})
    assert set(sampler.readings) == {"b"}


def test_the_last_answer_serves_a_repeat_until_a_reading_is_stale(tmp_path: Path) -> None:
    files, sampler, first = measured_once(tmp_path, 0.3)
    assert sampler.measure({"b": 20}) is first and files.paths == []
    wait_for(lambda: sampler.measure({"b": 20}) is not first, what="a stale reading")
    assert "20/stat" in files.paths  # read afresh


def test_sampler_on_a_real_process_group() -> None:
    group = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    groups = ProcessGroups(ProcFiles(), is_leader=lambda pid: False)
    try:
        wait_for(lambda: len(groups.find({group.pid}).get(group.pid, [])) == 3, what="3 members")
        cpu, rss = ResourceSampler().measure({"c": group.pid})["c"]
        assert cpu is not None and 0 <= cpu < 50
        assert rss is not None and 3 * (100 << 10) < rss < 64 << 20
    finally:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait()
        reap_adopted()  # the sleeps, orphaned, came to us (a subreaper)


def test_an_unreadable_proc_gives_no_figures_not_an_error(tmp_path: Path) -> None:
    # As when superd is out of fds (EMFILE): status still answers, without figures.
    assert ResourceSampler(ProcFiles(str(tmp_path / "absent"))).measure({"a": 123}) \
        == {"a": (None, None)}


def test_a_long_children_file_is_read_to_its_end(tmp_path: Path) -> None:
    pids = list(range(100_000, 120_000))  # some 140 KB: more than one read
    (tmp_path / "children").write_text("".join(f"{pid} " for pid in pids))
    data = ProcFiles(str(tmp_path)).read("children", whole=True)
    assert data is not None and parse_children(data) == pids
