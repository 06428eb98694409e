"""Faults inside superd and around it: a broken loop, missing resources, a
log that cannot be written.  Real daemons, with the fault made from outside
(a limit, a full disk) or, for superd's own bugs, by a test script that
patches one method of an otherwise real daemon."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from support import Superd, alive, wait_for

PY = sys.executable

# A real foreground daemon whose loop machinery breaks once TRIGGER exists:
# "once" breaks one pass (the crash shutdown then runs the loop again),
# "always" breaks every pass (the crash shutdown falls back to signals).
CRASHING_DAEMON = r"""
import os, sys
from superd import daemon, loop

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
