"""max_memory through a real daemon: a worker whose process group outgrows
its limit is restarted (a memory event first, counted in restarts), one well
under its limit is left alone, and a daemon wakes up for the checks only
while an instance with a limit runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from superd.memory import CHECK_EVERY, IN_A_ROW
from superd.resources import PAGE_SIZE
from support import DEADLINE, Client, Superd, wait_for

PY = sys.executable
MiB = 1 << 20
HELD = 48  # MiB that each of the two processes of `leaky` holds
LIMIT = 80 * MiB  # above either process alone, below the two together

# Forks a child that stays in the worker's process group; each then fills
# HELD MiB (written, so resident), one MiB at a time, and waits.
LEAKY = f"""
import os, time
held = []
role = "child" if os.fork() == 0 else "leader"
for _ in range({HELD}):
    held.append(bytearray(b"x" * {MiB}))
    time.sleep(0.01)
print(role, "holds", len(held), "MiB", flush=True)
time.sleep(600)
"""


def members_of(pgid: int) -> list[int]:
    """The test's own scan of /proc for the processes in a group."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[2]) == pgid:
            found.append(int(entry))
    return found


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def ctl_status(superd: Superd) -> dict[str, dict[str, Any]]:
    result = superd.ctl("--json", "status")
    assert result.returncode in (0, 3), result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background test run may ignore it


def test_a_group_above_max_memory_is_restarted_and_one_below_is_not(superd: Superd) -> None:
    superd.start({
        "leaky": {"command": [PY, "-c", LEAKY], "startsecs": "200ms", "max_memory": LIMIT},
        "lean": {"command": [PY, "-c", "import time; time.sleep(600)"], "startsecs": "200ms",
                 "max_memory": "1GB"},
    })
    leaky = superd.wait_state("leaky", "RUNNING")["pid"]
    lean = superd.wait_state("lean", "RUNNING")["pid"]
    events_file = superd.folder / "events.jsonl"
    with events_file.open("w") as out:
        events = subprocess.Popen([PY, "-m", "superd.cli", "-s", superd.socket, "--json",
                                   "events"], env=superd.env, stdout=out,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        # Subscribed once a (no-op) reload's event comes through.
        wait_for(lambda: superd.call("reload") is not None and any(
            e["event"] == "reload" for e in read_events(events_file)), what="subscribed")
        # Both processes full: neither alone is above the limit, the group is.
        both = wait_for(lambda: len(held := members_of(leaky)) == 2
                        and all(rss(pid) > HELD * MiB for pid in held) and held,
                        what="leader and child holding their memory")
        assert all(rss(pid) < LIMIT for pid in both) and sum(map(rss, both)) > LIMIT

        def memory_events() -> list[dict[str, Any]]:
            return [e for e in read_events(events_file) if e["event"] == "memory"]

        # The limit is found at two checks in a row, CHECK_EVERY apart.
        first = wait_for(memory_events, IN_A_ROW * CHECK_EVERY + DEADLINE,
                         "a memory event")[0]
        assert first["name"] == "leaky" and first["pid"] == leaky
        assert first["rss_bytes"] > LIMIT and first["max_memory"] == LIMIT

        def restarted() -> dict[str, dict[str, Any]] | None:
            rows = ctl_status(superd)
            row = rows["leaky"]
            again = row["state"] == "RUNNING" and row["pid"] not in (None, leaky)
            return rows if again else None

        rows = wait_for(restarted, what="leaky RUNNING again with a new pid")
        assert rows["leaky"]["restarts"] >= 1
        assert (rows["lean"]["pid"], rows["lean"]["restarts"]) == (lean, 0)
        assert [e["name"] for e in memory_events()] == ["leaky"] * len(memory_events())
        # The memory event comes before the stop it causes.
        kinds = [(e["event"], e.get("name"), e.get("to")) for e in read_events(events_file)]
        assert kinds.index(("memory", "leaky", None)) \
            < kinds.index(("state", "leaky", "STOPPING"))
    finally:
        events.send_signal(signal.SIGINT)
        assert events.wait(DEADLINE) == 0
    log = (superd.folder / "log" / "superd.log").read_text()
    assert "leaky: memory (RSS of its process group)" in log and "restarting" in log


def wakeups(pid: int) -> int:
    """Times the process has given up or been taken off the CPU (both kinds)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return sum(int(line.split()[1]) for line in text.splitlines()
               if "ctxt_switches:" in line)


def settled_wakeups(pid: int) -> int:
    """The count once it has stayed the same for a second (a request's tail is done)."""
    seen = [wakeups(pid), time.monotonic()]

    def still() -> int | None:
        now = wakeups(pid)
        if now != seen[0]:
            seen[:] = [now, time.monotonic()]
        return now if time.monotonic() - seen[1] >= 1.0 else None

    return wait_for(still, what="the daemon to go idle")  # type: ignore[no-any-return]


def idle_for_longer_than_a_check(pid: int) -> int:
    """Wake-ups of pid over CHECK_EVERY and a bit, from an idle start."""
    before = settled_wakeups(pid)
    time.sleep(CHECK_EVERY + 1.5)  # what is measured is an absence: it takes this long
    return wakeups(pid) - before


def test_the_daemon_wakes_for_checks_only_while_a_limited_instance_runs(
        superd: Superd) -> None:
    superd.start({
        "plain": {"command": ["sleep", "600"], "startsecs": 0},
        "capped": {"command": ["sleep", "600"], "startsecs": 0, "max_memory": "1GB",
                   "autostart": False},
    })
    superd.wait_state("plain", "RUNNING")
    daemon = superd.pid
    assert daemon is not None
    assert idle_for_longer_than_a_check(daemon) == 0  # no limited instance runs
    assert superd.ctl("start", "capped").returncode == 0
    before = settled_wakeups(daemon)
    wait_for(lambda: wakeups(daemon) > before, CHECK_EVERY + DEADLINE, "a memory check")
    assert superd.ctl("stop", "capped").returncode == 0
    assert idle_for_longer_than_a_check(daemon) == 0  # its timer went with it


def test_checks_go_on_after_a_reexec(superd: Superd) -> None:
    # One process well above its limit: a re-exec moves no state, so only the
    # new image's own look at its instances can keep the checks going.
    fat = f"held = bytearray(b'x' * {64 * MiB}); import time; time.sleep(600)"
    superd.start({"fat": {"command": [PY, "-c", fat], "startsecs": "200ms",
                          "max_memory": "32MB"}})
    pid = superd.wait_state("fat", "RUNNING")["pid"]
    assert superd.ctl("reexec").returncode == 0
    wait_for(lambda: superd.call("ping")["reexecs"] == 1, what="the re-exec")
    client = Client(superd.socket, timeout=IN_A_ROW * CHECK_EVERY + DEADLINE)
    try:
        assert client.result("subscribe") == {}
        event = client.next_event("memory")
    finally:
        client.close()
    assert (event["name"], event["pid"]) == ("fat", pid) and event["rss_bytes"] > 32 * MiB
    row = wait_for(lambda: (row := superd.status("fat"))["state"] == "RUNNING"
                   and row["pid"] != pid and row, what="fat RUNNING again")
    assert row["restarts"] == 1
