"""CPU and memory figures per instance, read from /proc when status asks.

Nothing here runs on a timer: each status request samples /proc once (one
scan of /proc/*/stat finds every process group), and the CPU share is the
CPU time used since the previous sample of that instance's pid.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    pgrp: int
    cpu_ticks: int  # utime + stime of the process itself
    start_ticks: int  # since boot


@dataclass(frozen=True)
class Sample:
    pid: int
    cpu_seconds: float
    when: float  # monotonic


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat; the command name may itself hold spaces and ')'."""
    pid = int(text[:text.index(" ")])
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state) of proc(5).
    return ProcStat(pid=pid, pgrp=int(fields[2]), cpu_ticks=int(fields[11]) + int(fields[12]),
                    start_ticks=int(fields[19]))


def parse_statm_rss(text: str) -> int:
    """Resident set size in bytes from /proc/PID/statm."""
    return int(text.split()[1]) * PAGE_SIZE


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except (OSError, ValueError):
        return None


def scan_groups(pgids: set[int], proc: str = "/proc") -> dict[int, list[ProcStat]]:
    """Every live process in each wanted process group, from one /proc scan."""
    groups: dict[int, list[ProcStat]] = {pgid: [] for pgid in pgids}
    if not pgids:
        return groups
    try:
        entries = os.listdir(proc)
    except OSError:  # out of fds, say: status answers, without figures
        return groups
    for entry in entries:
        if not entry.isdigit():
            continue
        text = _read(f"{proc}/{entry}/stat")
        if text is None:
            continue
        try:
            stat = parse_stat(text)
        except (ValueError, IndexError):
            continue
        if stat.pgrp in groups:
            groups[stat.pgrp].append(stat)
    return groups


def group_rss(members: list[ProcStat], proc: str = "/proc") -> int:
    total = 0
    for member in members:
        text = _read(f"{proc}/{member.pid}/statm")
        if text is not None:
            total += parse_statm_rss(text)
    return total


def cpu_percent(previous: Sample, current: Sample) -> float:
    elapsed = current.when - previous.when
    if elapsed <= 0:
        return 0.0
    # Members that exit take their CPU time with them: never report < 0.
    return max(0.0, (current.cpu_seconds - previous.cpu_seconds) / elapsed * 100.0)


class ResourceSampler:
    """Remembers the last CPU sample per instance between status requests."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.samples: dict[str, Sample] = {}

    def measure(self, pids: dict[str, int]) -> dict[str, tuple[float | None, int | None]]:
        """Instance name -> (cpu_percent, rss_bytes) for each running instance pid."""
        groups = scan_groups(set(pids.values()), self.proc)
        now = time.monotonic()
        figures: dict[str, tuple[float | None, int | None]] = {}
        for name, pid in pids.items():
            members = groups.get(pid) or []
            leader = next((m for m in members if m.pid == pid), None)
            if leader is None:
                figures[name] = (None, None)  # gone, or not yet its own group
                continue
            current = Sample(pid, sum(m.cpu_ticks for m in members) / CLOCK_TICKS, now)
            previous = self.samples.get(name)
            if previous is None or previous.pid != pid:
                previous = self._since_start(leader, now)
            self.samples[name] = current
            figures[name] = (round(cpu_percent(previous, current), 1),
                             group_rss(members, self.proc))
        return figures

    def prune(self, running: set[str]) -> None:
        """Forget the samples of instances that no longer have a process."""
        for name in set(self.samples) - running:
            del self.samples[name]

    def _since_start(self, leader: ProcStat, now: float) -> Sample:
        """A first sample: zero CPU time at the moment the leader started."""
        text = _read(f"{self.proc}/uptime")
        if text is None:
            return Sample(leader.pid, 0.0, now)
        age = parse_uptime(text) - leader.start_ticks / CLOCK_TICKS
        return Sample(leader.pid, 0.0, now - max(0.0, age))
