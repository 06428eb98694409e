"""Unit tests for superd.resources: /proc parsing and CPU arithmetic."""

from __future__ import annotations

import subprocess
from pathlib import Path

from superd.resources import (
    CLOCK_TICKS,
    PAGE_SIZE,
    ResourceSampler,
    Sample,
    cpu_percent,
    parse_stat,
    parse_statm_rss,
    parse_uptime,
    scan_groups,
)
from support import wait_for

# A real line, with a command name that holds a space and a ')'.
STAT = ("4242 (my worker) x) S 1 4240 4240 0 -1 4194560 120 0 0 0 "
        "150 50 3 1 20 0 1 0 987654 12345678 300 18446744073709551615 "
        "1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")


def test_parse_stat_fields() -> None:
    stat = parse_stat(STAT)
    assert stat.pid == 4242
    assert stat.pgrp == 4240
    assert stat.cpu_ticks == 200  # utime 150 + stime 50; children's times not counted
    assert stat.start_ticks == 987654


def test_parse_statm_and_uptime() -> None:
    assert parse_statm_rss("5000 1234 300 10 0 400 0\n") == 1234 * PAGE_SIZE
    assert parse_uptime("12345.67 2345.01\n") == 12345.67


def test_cpu_percent() -> None:
    assert cpu_percent(Sample(1, 1.0, 10.0), Sample(1, 1.5, 11.0)) == 50.0
    assert cpu_percent(Sample(1, 2.0, 10.0), Sample(1, 1.0, 11.0)) == 0.0  # a member left
    assert cpu_percent(Sample(1, 1.0, 10.0), Sample(1, 2.0, 10.0)) == 0.0


def fake_proc(root: Path, processes: dict[int, tuple[int, int, int]]) -> None:
    """pid -> (pgrp, cpu ticks, resident pages)."""
    (root / "uptime").write_text("1000.0 10.0\n")
    (root / "self").mkdir()
    for pid, (pgrp, ticks, pages) in processes.items():
        folder = root / str(pid)
        folder.mkdir()
        fields = ["S", "1", str(pgrp)] + ["0"] * 8 + [str(ticks), "0"] + ["0"] * 6
        fields += [str(int(900 * CLOCK_TICKS))] + ["0"] * 20
        (folder / "stat").write_text(f"{pid} (w) " + " ".join(fields) + "\n")
        (folder / "statm").write_text(f"9 {pages} 0 0 0 0 0\n")


def test_scan_groups_and_sampler_sum_the_process_group(tmp_path: Path) -> None:
    fake_proc(tmp_path, {10: (10, 100, 5), 11: (10, 300, 7), 20: (20, 50, 1), 30: (99, 9, 9)})
    groups = scan_groups({10, 20}, str(tmp_path))
    assert sorted(m.pid for m in groups[10]) == [10, 11]
    sampler = ResourceSampler(str(tmp_path))
    figures = sampler.measure({"a": 10, "b": 20, "gone": 40})
    # First sample: since the leader started, 100 s ago (uptime 1000, start 900).
    assert figures["a"][1] == 12 * PAGE_SIZE
    assert abs((figures["a"][0] or 0) - 400 / CLOCK_TICKS) < 0.2
    assert figures["gone"] == (None, None)
    assert set(sampler.samples) == {"a", "b"}
    sampler.measure({"b": 20})  # a status of one instance keeps the others' samples
    assert set(sampler.samples) == {"a", "b"}
    sampler.prune({"b"})
    assert set(sampler.samples) == {"b"}


def test_sampler_on_a_real_process_group() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        sampler = ResourceSampler()
        cpu, rss = wait_for(lambda: sampler.measure({"c": child.pid})["c"][1] and
                            sampler.measure({"c": child.pid})["c"], what="figures")
        assert 0 <= cpu < 50
        assert 100 << 10 < rss < 64 << 20
    finally:
        child.kill()
        child.wait()


def test_an_unlistable_proc_gives_no_figures_not_an_error(tmp_path: Path) -> None:
    # As when superd is out of fds (EMFILE): status still answers, without figures.
    assert scan_groups({123}, str(tmp_path / "absent")) == {123: []}
    assert ResourceSampler(str(tmp_path / "absent")).measure({"a": 123}) == {"a": (None, None)}
