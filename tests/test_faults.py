"""Faults inside superd and around it: a broken loop, missing resources, a
log that cannot be written.  Real daemons, with the fault made from outside
(a limit, a full disk) or, for superd's own bugs, by a test script that
patches one method of an otherwise real daemon."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import Superd, alive, small_disk, wait_for

PY = sys.executable

# A real foreground daemon whose loop machinery breaks once TRIGGER exists:
# "once" breaks one pass (the crash shutdown then runs the loop again),
# "always" breaks every pass (the crash shutdown falls back to signals).
# Its crash budget is spent from the start: the crash is answered by the
# ordered shutdown, not by a re-exec (test_reexec.py covers those).
CRASHING_DAEMON = r"""
import os, sys
from superd import daemon, loop, reexec

reexec.MAX_CRASHES = 0

trigger, mode, config = sys.argv[1:4]
original = loop.Loop._run_due_timers

def broken(self):
    if os.path.exists(trigger):
        if mode == "once":
            os.unlink(trigger)
        raise RuntimeError("the loop machinery broke")
    original(self)

loop.Loop._run_due_timers = broken
sys.exit(daemon.main(["--foreground", "-c", config]))
"""


def polite_worker(marker: Path) -> dict[str, object]:
    """Writes marker when it gets SIGTERM, so an ordered stop can be told from a kill."""
    script = f"trap 'echo term > {marker}; exit 0' TERM; while :; do sleep 0.05; done"
    return {"command": ["sh", "-c", script], "startsecs": "200ms"}


@pytest.mark.parametrize("mode", ["once", "always"])
def test_error_escaping_the_loop_stops_workers_and_exits_nonzero(
        superd: Superd, mode: str) -> None:
    marker = superd.folder / "got-term"
    trigger = superd.folder / "break-now"
    superd.write_config({"a": polite_worker(marker)})
    daemon = subprocess.Popen([PY, "-c", CRASHING_DAEMON, str(trigger), mode,
                               str(superd.config_path)], env=superd.env,
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: Path(superd.socket).exists(), what="the control socket")
        worker_pid = superd.wait_state("a", "RUNNING")["pid"]
        trigger.touch()
        waker = superd.client()
        waker.send("ping")  # wakes the loop, which then breaks
        _, stderr = daemon.communicate(timeout=20)
        waker.close()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 70, stderr
    assert "internal error escaped the event loop" in stderr
    assert "Traceback" in stderr and "RuntimeError: the loop machinery broke" in stderr
    assert marker.read_text() == "term\n"  # asked to stop, not just killed
    assert not alive(worker_pid)
    if mode == "once":
        assert "a: STOPPING -> STOPPED" in stderr  # the ordered shutdown path
    else:
        assert "the event loop failed again; signalling every worker" in stderr
    assert not Path(superd.socket).exists()


# -- resources ------------------------------------------------------------------

def open_files_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) of "Max open files" in /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def test_superd_raises_its_fd_limit_and_workers_get_the_original(superd: Superd) -> None:
    superd.write_config({"a": {"command": ["sleep", "600"], "startsecs": 0}})

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    launcher = subprocess.run([PY, "-m", "superd", "-c", str(superd.config_path)],
                              env=superd.env, capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL, preexec_fn=low_limit)
    assert launcher.returncode == 0, launcher.stderr
    worker_pid = superd.wait_state("a", "RUNNING")["pid"]
    assert open_files_limit(superd.pid or 0) == (4096, 4096)
    assert open_files_limit(worker_pid) == (256, 4096)


def first_free_fd(pid: int, also_free: set[str]) -> int:
    """The lowest fd number the process could get, counting also_free as closed."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}") not in also_free}
    return next(n for n in range(len(used) + 1) if n not in used)


def test_out_of_fds_waits_in_backoff_without_giving_up(superd: Superd) -> None:
    superd.start({"a": {"command": ["sleep", "600"], "startsecs": 0, "startretries": 1,
                        "autorestart": "always",
                        "backoff": {"initial": "20ms", "max": "100ms"}}})
    daemon = superd.pid or 0
    pid = superd.wait_state("a", "RUNNING")["pid"]
    client = superd.client()  # accepted now (the ping says so): later it would need an fd
    assert client.result("ping")["pid"] == daemon
    pipes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)}
    # No fd number below the limit is free once the worker's pipes are closed.
    limit = first_free_fd(daemon, pipes)
    # The soft limit only: raising a lowered hard limit again needs CAP_SYS_RESOURCE.
    saved = resource.prlimit(daemon, resource.RLIMIT_NOFILE)
    resource.prlimit(daemon, resource.RLIMIT_NOFILE, (limit, saved[1]))
    try:
        os.kill(pid, signal.SIGKILL)  # RUNNING -> EXITED -> restart, which needs pipes
        row = wait_for(lambda: (r := client.result("status", {"names": ["a"]})[0])
                       ["state"] == "BACKOFF" and r, what="BACKOFF")
        assert row["description"] == "cannot start: Too many open files (EMFILE); retrying"
        began = time.monotonic()
        while time.monotonic() - began < 2.0:  # 20+ tries at 100 ms, startretries is 1
            row = client.result("status", {"names": ["a"]})[0]
            assert row["state"] == "BACKOFF" and "EMFILE" in row["description"], row
            time.sleep(0.05)
    finally:
        resource.prlimit(daemon, resource.RLIMIT_NOFILE, saved)
    row = wait_for(lambda: (r := client.result("status", {"names": ["a"]})[0])
                   ["state"] == "RUNNING" and r, what="RUNNING again")
    assert row["description"] == "" and row["pid"] != pid and row["restarts"] == 1
    client.close()
    text = (superd.folder / "log" / "superd.log").read_text()
    assert "a: EXITED -> BACKOFF (cannot start: Too many open files (EMFILE); retrying)" in text
    # 20 and more failed tries, but the daemon's log says so about once a second.
    tries = [line for line in text.splitlines() if "a: cannot start:" in line]
    assert 2 <= len(tries) <= 6, tries
    assert "Too many open files (repeated" in tries[1] and " times in the last 1." in tries[1]


# -- logs that cannot be written ---------------------------------------------------

def test_full_disk_under_a_worker_log_is_a_log_error_event(superd: Superd) -> None:
    with small_disk(superd.folder / "small") as small:
        out = small / "filler.out.log"
        superd.start({"filler": {"command": ["yes", "full"], "autostart": False,
                                 "startsecs": 0,
                                 "stdout": {"file": str(out), "maxbytes": 0}}})
        events = superd.client()
        assert events.result("subscribe") == {}
        superd.call("start", {"names": ["filler"]})  # it floods the small disk
        error = events.next_event("log_error")
        assert error["name"] == "filler" and error["path"] == str(out)
        assert error["message"] == "No space left on device"
        events.close()
        superd.stop()


def test_a_daemon_log_that_cannot_be_written_is_a_log_error_event(superd: Superd) -> None:
    superd.start({"a": {"command": ["sleep", "600"], "startsecs": 0}})
    superd.wait_state("a", "RUNNING")
    daemon_log = superd.folder / "log" / "superd.log"
    events = superd.client()
    assert events.result("subscribe") == {}
    daemon = superd.pid or 0
    limits = resource.prlimit(daemon, resource.RLIMIT_FSIZE)
    # A 1-byte file size limit: every write to the (longer) daemon log fails, EFBIG.
    resource.prlimit(daemon, resource.RLIMIT_FSIZE, (1, limits[1]))
    try:
        superd.call("reopen")  # which logs a line
        error = events.next_event("log_error")
    finally:
        resource.prlimit(daemon, resource.RLIMIT_FSIZE, limits)
    assert error["name"] is None and error["path"] == str(daemon_log)
    assert error["message"] == "File too large"
    superd.call("reopen")
    wait_for(lambda: "writing this log again (lines lost: 1)" in daemon_log.read_text(),
             what="the recovery note")
    events.close()
