"""CPU and memory figures per instance, read from /proc when status asks.

Nothing here runs on a timer, and nothing scans /proc: an instance's process
group is found by walking down from its leader through
/proc/PID/task/TID/children, keeping the processes of the leader's group,
and from superd's own children in that group (a worker's orphans, which
come to superd because it is a child subreaper).  So the cost grows with the
workers' own processes, never with the rest of the host.

A reading is reused for FRESH_FOR seconds, so a loop of status calls does
not re-read /proc on every call; the CPU share is the CPU time used since
the previous reading of the same pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FRESH_FOR = 0.5  # seconds a reading is reused (CPU% over less is noise)
CHUNK = 65536

Figures = tuple[float | None, int | None]  # (cpu_percent, rss_bytes)
NO_FIGURES: Figures = (None, None)


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    pgrp: int
    cpu_ticks: int  # utime + stime of the process itself (all its threads)
    waited_ticks: int  # cutime + cstime: of its children that it has waited for
    threads: int
    start_ticks: int  # since boot


@dataclass(frozen=True, slots=True)
class Sample:
    pid: int
    cpu_seconds: float
    when: float  # monotonic


@dataclass(frozen=True, slots=True)
class Reading:
    sample: Sample
    figures: Figures
    # CPU seconds of the group's processes and of the children they have
    # waited for: what the group has used since its leader started, so it
    # does not fall when a member's child exits (a counter, for metrics).
    used_seconds: float


def parse_stat(data: bytes) -> ProcStat:
    """Parse /proc/PID/stat; the command name may itself hold spaces and ')'."""
    pid = int(data[:data.index(b" ")])
    # fields[0] is field 3 (state) of proc(5); only the first 22 are split.
    fields = data[data.rindex(b")") + 2:].split(None, 20)
    return ProcStat(pid=pid, pgrp=int(fields[2]), cpu_ticks=int(fields[11]) + int(fields[12]),
                    waited_ticks=int(fields[13]) + int(fields[14]), threads=int(fields[17]),
                    start_ticks=int(fields[19]))


def parse_statm_rss(data: bytes) -> int:
    """Resident set size in bytes from /proc/PID/statm."""
    return int(data.split(None, 2)[1]) * PAGE_SIZE


def parse_children(data: bytes) -> list[int]:
    """The pids in /proc/PID/task/TID/children ("12 13 ")."""
    return [int(word) for word in data.split()]


def _read_rest(fd: int, first: bytes) -> bytes:
    chunks = [first]
    while chunk := os.read(fd, CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def boot_seconds() -> float:
    """Seconds since boot, on the clock of /proc/PID/stat's start time."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def cpu_percent(previous: Sample, current: Sample) -> float:
    elapsed = current.when - previous.when
    if elapsed <= 0:
        return 0.0
    # Members that exit take their CPU time with them: never report < 0.
    return max(0.0, (current.cpu_seconds - previous.cpu_seconds) / elapsed * 100.0)


class ProcFiles:
    """The /proc reads the sampler makes, by path below the root (a seam for tests).

    os.open/os.read, not open(): no file object, no decoding, one read for
    a file of one page.
    """

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def read(self, path: str, whole: bool = False) -> bytes | None:
        """The file's bytes, or None if it cannot be read (the process is gone).

        One read unless `whole`: stat and statm are one page at most, and
        /proc gives a page in one read.
        """
        try:
            fd = os.open(f"{self.root}/{path}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, CHUNK)
            return _read_rest(fd, data) if whole and data else data
        except OSError:
            return None
        finally:
            os.close(fd)

    def tasks(self, pid: str) -> list[str]:
        """The thread ids of a process (none if it is gone)."""
        try:
            return os.listdir(f"{self.root}/{pid}/task")
        except OSError:
            return []


class ProcessGroups:
    """Finds the members of wanted process groups without scanning /proc."""

    def __init__(self, files: ProcFiles, is_leader: Callable[[int], bool]) -> None:
        self.files = files
        self.is_leader = is_leader  # a worker's main process: never an orphan

    def find(self, leaders: set[int]) -> dict[int, list[ProcStat]]:
        """Each live leader's group (leader first); a pid that is not (yet)
        the leader of its own group has none."""
        groups: dict[int, dict[int, ProcStat]] = {}
        for pid in leaders:
            stat = self.stat(pid)
            if stat is not None and stat.pgrp == pid:
                groups[pid] = {pid: stat}
        roots = [members[pgid] for pgid, members in groups.items()]
        if groups:
            roots += self.adopted(groups)
        for root in roots:
            self.descend(root, groups[root.pgrp])
        return {pgid: list(members.values()) for pgid, members in groups.items()}

    def adopted(self, groups: dict[int, dict[int, ProcStat]]) -> Iterator[ProcStat]:
        """superd's children in a wanted group: orphans whose parent died."""
        for pid in self.children("self", None):
            if pid in groups or self.is_leader(pid):
                continue
            stat = self.stat(pid)
            if stat is not None and stat.pgrp in groups:
                groups[stat.pgrp][pid] = stat
                yield stat

    def descend(self, root: ProcStat, members: dict[int, ProcStat]) -> None:
        """Add root's descendants in root's group, through processes of that group."""
        below = [root]
        while below:
            parent = below.pop()
            for pid in self.children(str(parent.pid), parent.threads):
                if pid in members:
                    continue  # re-parented between two reads: counted once
                stat = self.stat(pid)
                if stat is not None and stat.pgrp == root.pgrp:
                    members[pid] = stat
                    below.append(stat)

    def children(self, pid: str, threads: int | None) -> list[int]:
        """A process's children: each thread has its own list."""
        tids = [pid] if threads == 1 else self.files.tasks(pid)
        found: list[int] = []
        for tid in tids:
            data = self.files.read(f"{pid}/task/{tid}/children", whole=True)
            if data:
                found += parse_children(data)
        return found

    def stat(self, pid: int) -> ProcStat | None:
        data = self.files.read(f"{pid}/stat")
        if data is None:
            return None
        try:
            return parse_stat(data)
        except (ValueError, IndexError):
            return None

    def rss(self, members: list[ProcStat]) -> int:
        total = 0
        for member in members:
            data = self.files.read(f"{member.pid}/statm")
            if data:
                total += parse_statm_rss(data)
        return total


class ResourceSampler:
    """Per instance, the last reading: reused while fresh, the base of the next CPU%."""

    def __init__(self, files: ProcFiles | None = None,
                 is_leader: Callable[[int], bool] = lambda pid: False,
                 fresh_for: float = FRESH_FOR) -> None:
        self.groups = ProcessGroups(files or ProcFiles(), is_leader)
        self.fresh_for = fresh_for
        self.readings: dict[str, Reading] = {}
        # The last answer: (its oldest reading's time, the pids asked, the figures)
        self._last: tuple[float, dict[str, int], dict[str, Figures]] | None = None

    def measure(self, pids: dict[str, int]) -> dict[str, Figures]:
        """Instance name -> (cpu_percent, rss_bytes), for at least each
        running instance pid asked about."""
        now = time.monotonic()
        last = self._last
        # A status loop asks again and again for what it asked last: one
        # C-level subset test answers it, not a check per instance.
        if last is not None and now - last[0] < self.fresh_for and pids.items() <= last[1].items():
            return last[2]
        figures: dict[str, Figures] = {}
        stale: dict[str, int] = {}
        oldest = now
        for name, pid in pids.items():
            reading = self.readings.get(name)
            if reading is not None and reading.sample.pid == pid \
                    and now - reading.sample.when < self.fresh_for:
                figures[name] = reading.figures
                oldest = min(oldest, reading.sample.when)
            else:
                stale[name] = pid
        if stale:
            figures.update(self._read(stale, now))
            self._forget_others(pids)
        self._last = (oldest, pids, figures)
        return figures

    def cpu_seconds(self, name: str, pid: int) -> float | None:
        """The CPU seconds used by the group of `pid` (and the children its
        members waited for) at its last reading, if that reading was of pid."""
        reading = self.readings.get(name)
        if reading is None or reading.sample.pid != pid:
            return None
        return reading.used_seconds

    def _forget_others(self, pids: dict[str, int]) -> None:
        """Drop the readings of processes that are no longer a worker's."""
        for name in [name for name, reading in self.readings.items()
                     if name not in pids and not self.groups.is_leader(reading.sample.pid)]:
            del self.readings[name]

    def _read(self, pids: dict[str, int], now: float) -> dict[str, Figures]:
        groups = self.groups.find(set(pids.values()))
        figures: dict[str, Figures] = {}
        for name, pid in pids.items():
            members = groups.get(pid)
            if not members:
                figures[name] = NO_FIGURES  # gone, or not yet its own group
                continue
            current = Sample(pid, sum(m.cpu_ticks for m in members) / CLOCK_TICKS, now)
            previous = self.readings.get(name)
            base = previous.sample if previous and previous.sample.pid == pid \
                else _since_start(members[0], now)
            figures[name] = (round(cpu_percent(base, current), 1), self.groups.rss(members))
            used = sum(m.cpu_ticks + m.waited_ticks for m in members) / CLOCK_TICKS
            self.readings[name] = Reading(current, figures[name], used)
        return figures


def _since_start(leader: ProcStat, now: float) -> Sample:
    """A first sample: zero CPU time at the moment the leader started."""
    age = boot_seconds() - leader.start_ticks / CLOCK_TICKS
    return Sample(leader.pid, 0.0, now - max(0.0, age))
