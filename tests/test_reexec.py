"""Re-exec in place, through real daemons: every worker keeps its pid, state,
uptime, restarts, timers and log pipe; crashes of the loop are answered by a
re-exec; a new image that cannot take over is refused before the exec."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import superd as superd_package
from superd.handover import FORMAT, HandoverError, read_state, write_state
from superd.reexec import CrashCount, exec_image, verdict
from support import (
    DEADLINE,
    REPO,
    Client,
    Superd,
    TryLoop,
    alive,
    wait_for,
    zombie_children,
)

PY = sys.executable
FAULT_INJECTION = REPO / "tests" / "faultinject"

# Writes numbered lines (a batch, then a short pause) until SIGTERM, then the
# count of lines written to the file named by argv[1].
FLOOD = r"""
import os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
n = 0
while not stop:
    data = memoryview("".join(f"{n + i}\n" for i in range(200)).encode())
    while data:
        data = data[os.write(1, data):]
    n += 200
    time.sleep(0.002)
with open(sys.argv[1], "w") as out:
    out.write(str(n))
"""


def sleeper(**keys: Any) -> dict[str, Any]:
    return {"command": ["sleep", "600"], "startsecs": 0, **keys}


def pids_and_restarts(superd: Superd) -> dict[str, tuple[int, int]]:
    return {row["name"]: (row["pid"], row["restarts"]) for row in superd.status()}


def reexecs(superd: Superd) -> int:
    return int(superd.call("ping")["reexecs"])


def wait_reexecs(superd: Superd, count: int) -> None:
    wait_for(lambda: reexecs(superd) == count, what=f"re-exec {count} to be done")


def open_fds(pid: int) -> list[str]:
    """What the process's descriptors are (files by path; pipes and sockets by kind)."""
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds.append(target.split(":")[0] if ":[" in target else target)
    return sorted(kinds)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def ping_once(path: str) -> bool:
    """Connect and ping; whether the ping was answered."""
    client = Client(path)
    try:
        client.send("ping")
        return client.receive() is not None
    finally:
        client.close()


def start_followers(superd: Superd, output: Path) \
        -> tuple[subprocess.Popen[str], subprocess.Popen[bytes]]:
    """`superctl events` and `superctl logs -f flood` (into output), each known
    to be connected."""
    command = [PY, "-m", "superd.cli", "-s", superd.socket]
    events = subprocess.Popen([*command, "events"], env=superd.env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    with output.open("w") as sink:
        follower = subprocess.Popen([*command, "logs", "-f", "-n", "1", "flood"],
                                    env=superd.env, stdout=sink, stderr=subprocess.DEVNULL)
    assert events.stdout is not None
    # The tail comes first: once it is there, the rest follows.
    wait_for(lambda: output.stat().st_size > 0, what="logs -f to follow")
    # A reload of the unchanged config is an event that touches no worker:
    # once `events` prints one, it is subscribed.
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.append(events.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()

    def reload_seen() -> bool:
        superd.call("reload")
        reader.join(0.2)
        return bool(seen)

    wait_for(reload_seen, what="superctl events to subscribe")
    assert "reload" in seen[0]
    return events, follower


def test_ten_reexecs_keep_every_worker_pipe_and_line(superd: Superd, tmp_path: Path) -> None:
    count_file = tmp_path / "flood.count"
    superd.start({
        "idle": sleeper(numprocs=19),
        "flood": {"command": [PY, "-c", FLOOD, str(count_file)], "startsecs": 0,
                  "stdout": {"maxbytes": 0}},
    })
    wait_for(lambda: all(row["state"] == "RUNNING" for row in superd.status()))
    before = pids_and_restarts(superd)
    assert len(before) == 20
    uptimes = {row["name"]: row["uptime"] for row in superd.status()}
    pid = superd.pid
    assert pid is not None
    # The control and the notify socket, and no client's connection.
    fds_before = wait_for(lambda: (fds := open_fds(pid)).count("socket") == 2 and fds)
    connects = TryLoop(lambda: ping_once(superd.socket))
    connects.start()
    try:
        for round_number in range(1, 11):
            events, follower = start_followers(superd, tmp_path / "followed")
            if round_number % 2:
                done = superd.ctl("reexec")
                assert done.returncode == 0, done.stderr
                assert f"re-execs {round_number}" in done.stdout
            else:
                os.kill(pid, signal.SIGUSR2)
                wait_reexecs(superd, round_number)
            # `events` prints the reexec event and ends; `logs -f` ends: both exit 0.
            assert events.wait(DEADLINE) == 0
            assert follower.wait(DEADLINE) == 0
            assert events.stdout is not None
            assert "reexec" in events.stdout.read()
            assert superd.pid == pid and alive(pid)
            assert pids_and_restarts(superd) == before
            rows = {row["name"]: row["uptime"] for row in superd.status()}
            assert all(rows[name] >= uptimes[name] for name in rows), "an uptime was reset"
            uptimes = rows
    finally:
        connects.finish()
    assert connects.refused == 0
    assert connects.answered > 10
    ping = superd.call("ping")
    assert ping["reexecs"] == 10 and ping["pid"] == pid
    # What was handed over, and nothing more (once the ping's connection is gone).
    wait_for(lambda: open_fds(pid) == fds_before, what="the same descriptors")
    # Every line the flooding worker wrote is in its log once, in order.
    assert superd.ctl("stop", "flood").returncode == 0
    written = int(wait_for(lambda: count_file.exists() and count_file.read_text()))
    lines = superd.log_file("flood").read_text().splitlines()
    assert written > 0
    assert lines == [str(n) for n in range(written)]
    assert not zombie_children(pid)


def test_the_reexec_event_and_ping(superd: Superd) -> None:
    superd.start({"a": sleeper()})
    superd.wait_state("a", "RUNNING")
    client = superd.client()
    try:
        client.result("subscribe")
        assert superd.call("ping")["reexecs"] == 0
        assert superd.ctl("reexec").returncode == 0
        event = client.next_event("reexec")
        assert (event["reason"], event["reexecs"], event["pid"]) == ("request", 1, superd.pid)
        assert client.receive() is None  # then the connection closes
    finally:
        client.close()
    ping = superd.call("ping")
    assert ping["reexecs"] == 1 and ping["uptime"] > 0
    assert "re-execs 1" in superd.ctl("ping").stdout
    # The pidfile lock came through the exec: a second daemon is refused.
    second = superd.run("-c", str(superd.config_path))
    assert second.returncode == 1 and "already running" in second.stderr


def test_a_worker_that_exits_during_the_switch_is_reaped_and_restarted(
        superd: Superd) -> None:
    superd.start({"a": sleeper(), "b": sleeper()})
    superd.wait_state("a", "RUNNING")
    pid = superd.pid
    assert pid is not None
    victim = superd.status("a")["pid"]
    os.kill(pid, signal.SIGUSR2)
    # The new image's command line shows once the exec is done; it then
    # still has to start Python and take over: kill the worker meanwhile.
    wait_for(lambda: b"--resume" in cmdline(pid), what="the exec")
    os.kill(victim, signal.SIGKILL)
    wait_reexecs(superd, 1)
    row = wait_for(lambda: (r := superd.status("a"))["pid"] not in (None, victim) and
                   r["state"] == "RUNNING" and r)
    assert row["restarts"] == 1
    assert not alive(victim)
    assert "took over" in (superd.folder / "log" / "superd.log").read_text()


def test_backoff_resumes_its_schedule_and_still_reaches_fatal(superd: Superd) -> None:
    superd.start({
        "a": sleeper(),
        "failing": {"command": ["sh", "-c", "exit 3"], "startsecs": "1s", "startretries": 2,
                    "backoff": {"initial": "3s", "max": "3s"}},
    })
    for failed_tries in (1, 2):  # each in BACKOFF (1.5 to 3 s), re-exec'd during it
        wait_for(lambda tries=failed_tries: (r := superd.status("failing"))["state"] ==
                 "BACKOFF" and r["restarts"] == tries - 1, what=f"failed try {failed_tries}")
        assert superd.ctl("reexec").returncode == 0
        assert reexecs(superd) == failed_tries
    row = superd.wait_state("failing", "FATAL")
    assert row["restarts"] == 2 and row["exit_status"] == 3


def test_kill_9_after_reexecs_is_restarted(superd: Superd) -> None:
    superd.start({"a": sleeper(), "b": sleeper()})
    superd.wait_state("b", "RUNNING")
    for _ in range(3):
        assert superd.ctl("reexec").returncode == 0
    victim = superd.status("a")["pid"]
    os.kill(victim, signal.SIGKILL)
    row = wait_for(lambda: (r := superd.status("a"))["pid"] not in (None, victim) and
                   r["state"] == "RUNNING" and r)
    assert row["restarts"] == 1
    assert superd.status("b")["restarts"] == 0
    # Started by the new image, it inherits nothing of superd's but its stdio.
    assert sorted(os.listdir(f"/proc/{row['pid']}/fd")) == ["0", "1", "2"]


def test_the_keeper_still_guards_the_workers_after_reexecs(superd: Superd) -> None:
    superd.start({"a": sleeper(numprocs=2)})
    wait_for(lambda: superd.status("a:1")["state"] == "RUNNING")
    assert superd.ctl("reexec").returncode == 0
    assert superd.call("ping")["guard"] == "keeper"
    workers = [row["pid"] for row in superd.status()]
    pid = superd.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(worker) for worker in workers), what="workers killed")


def test_starting_and_stopping_timers_run_on_after_a_reexec(superd: Superd) -> None:
    superd.start({
        "slow": {"command": ["sleep", "600"], "startsecs": "2s"},
        "stubborn": {"command": ["sh", "-c", "trap '' TERM; sleep 600 & wait"],
                     "startsecs": 0, "stoptimeout": "2s"},
    })
    superd.wait_state("stubborn", "RUNNING")
    stopping = subprocess.Popen([PY, "-m", "superd.cli", "-s", superd.socket, "stop",
                                 "stubborn"], env=superd.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        superd.wait_state("stubborn", "STOPPING")
        assert superd.status("slow")["state"] == "STARTING"
        assert superd.ctl("reexec").returncode == 0
        # startsecs and stoptimeout go on: RUNNING, and SIGKILL to the one ignoring TERM.
        superd.wait_state("slow", "RUNNING")
        superd.wait_state("stubborn", "STOPPED", timeout=DEADLINE)
    finally:
        stopping.wait(DEADLINE)


# -- the new image: upgraded, or unable to take over ------------------------------

def installed_copy(tmp_path: Path) -> Path:
    """A copy of the superd package on PYTHONPATH: editing it is upgrading superd."""
    folder = tmp_path / "site"
    shutil.copytree(Path(superd_package.__file__).parent, folder / "superd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "superd"


def test_reexec_runs_the_upgraded_code_and_refuses_code_that_cannot_take_over(
        superd: Superd, tmp_path: Path) -> None:
    package = installed_copy(tmp_path)
    superd.env["PYTHONPATH"] = str(package.parent)
    superd.start({"a": sleeper(), "b": sleeper(numprocs=2)})
    superd.wait_state("a", "RUNNING")
    before = pids_and_restarts(superd)
    (package / "__init__.py").write_text('__version__ = "99.0.0"\n')
    upgraded = superd.ctl("reexec")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "superd 99.0.0" in upgraded.stdout
    assert superd.call("ping")["version"] == "99.0.0"
    assert pids_and_restarts(superd) == before
    # A version that reads another state format is refused before the exec.
    handover = package / "handover.py"
    handover.write_text(handover.read_text().replace("READABLE = frozenset({1})",
                                                     "READABLE = frozenset({2})"))
    refused = superd.ctl("reexec")
    assert refused.returncode == 1
    assert "reads state format 2, not 1" in refused.stderr
    # So is one that does not accept the running config.
    config = package / "config.py"
    original_config = config.read_text()
    config.write_text(original_config.replace('NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")',
                                              'NAME_PATTERN = re.compile(r"[0-9]+")'))
    handover.write_text(handover.read_text().replace("READABLE = frozenset({2})",
                                                     "READABLE = frozenset({1})"))
    strict = superd.ctl("reexec")
    assert strict.returncode == 1
    assert "does not accept the running config" in strict.stderr
    assert "workers.a" in strict.stderr
    # So is one that does not even import.
    (package / "daemon.py").write_text("def broken(:\n")
    broken = superd.ctl("reexec")
    assert broken.returncode == 1
    assert "SyntaxError" in broken.stderr
    ping = superd.call("ping")
    assert (ping["version"], ping["reexecs"]) == ("99.0.0", 1)
    assert pids_and_restarts(superd) == before


# -- crash recovery ---------------------------------------------------------------

def inject_faults(superd: Superd, tmp_path: Path) -> Path:
    fault = tmp_path / "fault"
    superd.env["PYTHONPATH"] = str(FAULT_INJECTION)
    superd.env["SUPERD_TEST_FAULT"] = str(fault)
    return fault


def crash(superd: Superd, fault: Path) -> None:
    """Make the loop fail once: the fault fires when its current round ends."""
    fault.touch()
    try:
        superd.call("ping")  # a round of the loop; the reply goes out before the fault
    except (AssertionError, OSError):
        pass
    wait_for(lambda: not fault.exists(), what="the fault to fire")


def test_an_error_that_escapes_the_loop_is_recovered_by_a_reexec(
        superd: Superd, tmp_path: Path) -> None:
    fault = inject_faults(superd, tmp_path)
    superd.start({"a": sleeper(numprocs=3), "b": {"command": ["sh", "-c", "exit 1"],
                                                  "startsecs": "1s", "startretries": 100,
                                                  "backoff": {"initial": "30s"}}})
    wait_for(lambda: superd.status("a:2")["state"] == "RUNNING")
    superd.wait_state("b", "BACKOFF")
    before = pids_and_restarts(superd)
    crash(superd, fault)
    wait_reexecs(superd, 1)
    assert pids_and_restarts(superd) == before
    log = (superd.folder / "log" / "superd.log").read_text()
    assert "internal error escaped the event loop" in log
    assert "RuntimeError: fault injected by the test" in log
    assert "re-executing (crash, re-exec 1)" in log
    victim = superd.status("a:1")["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: superd.status("a:1")["restarts"] == 1, what="a:1 restarted")


def test_a_new_image_that_fails_to_take_over_re_execs_with_the_same_state(
        superd: Superd, tmp_path: Path) -> None:
    fault = tmp_path / "resume-fault"
    superd.env["PYTHONPATH"] = str(FAULT_INJECTION)
    superd.env["SUPERD_TEST_RESUME_FAULT"] = str(fault)
    superd.start({"a": sleeper(numprocs=2), "slow": {"command": ["sleep", "600"],
                                                     "startsecs": "3s"}})
    wait_for(lambda: superd.status("a:1")["state"] == "RUNNING")
    before = pids_and_restarts(superd)
    fault.touch()
    assert superd.ctl("reexec").returncode == 0  # its new image fails, the next one serves
    assert not fault.exists()
    assert reexecs(superd) == 2
    assert pids_and_restarts(superd) == before
    superd.wait_state("slow", "RUNNING")  # its startsecs timer came through both images
    log = (superd.folder / "log" / "superd.log").read_text()
    assert "internal error while taking over the state; re-executing with it" in log


def test_a_failed_exec_leaves_the_old_image_serving(superd: Superd, tmp_path: Path) -> None:
    fault = tmp_path / "exec-fault"
    superd.env["PYTHONPATH"] = str(FAULT_INJECTION)
    superd.env["SUPERD_TEST_EXEC_FAULT"] = str(fault)
    superd.start({"a": sleeper(numprocs=2)})
    wait_for(lambda: superd.status("a:1")["state"] == "RUNNING")
    before = pids_and_restarts(superd)
    fault.touch()
    failed = superd.ctl("reexec")
    assert failed.returncode == 1
    assert "could not exec the new image and goes on as before" in failed.stderr
    assert not fault.exists()
    assert reexecs(superd) == 0 and pids_and_restarts(superd) == before
    log = (superd.folder / "log" / "superd.log").read_text()
    assert "re-exec failed; going on as before: cannot exec" in log
    assert superd.ctl("reexec").returncode == 0  # and the next one works
    assert reexecs(superd) == 1 and pids_and_restarts(superd) == before


def test_more_than_three_crashes_in_a_minute_stop_every_worker_and_exit_non_zero(
        superd: Superd, tmp_path: Path) -> None:
    fault = inject_faults(superd, tmp_path)
    superd.write_config({"a": sleeper(numprocs=2)})
    daemon_log = tmp_path / "stderr.log"
    with daemon_log.open("w") as stderr:
        daemon = subprocess.Popen([PY, "-m", "superd", "--foreground", "-c",
                                   str(superd.config_path)], env=superd.env, stderr=stderr,
                                  stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: superd.status("a:1")["state"] == "RUNNING"
                 if os.path.exists(superd.socket) else False)
        workers = [row["pid"] for row in superd.status()]
        for count in range(1, 4):
            crash(superd, fault)
            wait_reexecs(superd, count)
            assert [row["pid"] for row in superd.status()] == workers
        crash(superd, fault)
        assert daemon.wait(DEADLINE) == 70
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not any(alive(pid) for pid in workers)
    text = daemon_log.read_text()
    assert "more than 3 crashes within 60s; stopping every worker" in text
    assert "a:0: RUNNING -> STOPPING" in text  # stopped in order, not left to die


# -- systemd ----------------------------------------------------------------------

def test_under_systemd_a_reexec_is_reloading_then_ready(superd: Superd) -> None:
    superd.write_config({"a": sleeper()})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0superd-test-" + superd.tag)
    listener.settimeout(DEADLINE)
    env = dict(superd.env, NOTIFY_SOCKET="@superd-test-" + superd.tag)
    daemon = subprocess.Popen([PY, "-m", "superd", "--foreground", "-c",
                               str(superd.config_path)], env=env, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        assert listener.recv(4096) == b"READY=1"
        superd.wait_state("a", "RUNNING")
        worker = superd.status("a")["pid"]
        daemon.send_signal(signal.SIGUSR2)
        messages = []
        while not messages or messages[-1] != "READY=1":
            message = listener.recv(4096).decode()
            if not message.startswith("STATUS="):
                messages.append(message)
        assert messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert messages[1:] == ["READY=1"]
        assert superd.call("ping")["reexecs"] == 1
        assert superd.status("a")["pid"] == worker
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(DEADLINE) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()


# -- the parts, without a daemon ----------------------------------------------------

def test_the_state_goes_through_a_memfd_and_unknown_formats_are_refused() -> None:
    fd = write_state({"daemon": {"reexecs": 2}, "text": "é\x00"})
    assert os.get_inheritable(fd)
    state = read_state(fd)
    assert state == {"format": FORMAT, "daemon": {"reexecs": 2}, "text": "é\x00"}
    later = os.memfd_create("later")
    os.write(later, b'{"format": 999}')
    os.lseek(later, 0, os.SEEK_SET)
    with pytest.raises(HandoverError, match="not 999"):
        read_state(later)
    garbage = os.memfd_create("garbage")
    os.write(garbage, b"\x00not json")
    os.lseek(garbage, 0, os.SEEK_SET)
    with pytest.raises(HandoverError, match="cannot read the state"):
        read_state(garbage)


def test_can_resume_answers_for_each_format_and_checks_the_config(tmp_path: Path) -> None:
    config = tmp_path / "superd.yaml"

    def files(text: str) -> bytes:
        return json.dumps({str(config): text}).encode()

    taken = subprocess.run([PY, "-m", "superd", "--can-resume", str(FORMAT), str(config)],
                           input=files("workers: {a: {command: sleep 1}}\n"),
                           capture_output=True, timeout=DEADLINE)
    assert taken.returncode == 0, taken.stdout
    bad = subprocess.run([PY, "-m", "superd", "--can-resume", str(FORMAT), str(config)],
                         input=files("workers: {a: {commnd: sleep 1}}\n"), capture_output=True,
                         timeout=DEADLINE)
    assert bad.returncode == 1
    assert b"does not accept the running config" in bad.stdout
    assert b"workers.a.commnd" in bad.stdout
    stray = subprocess.run([PY, "-m", "superd", str(config)], capture_output=True,
                           timeout=DEADLINE)
    assert stray.returncode == 2  # a config without -c is a usage error, as before


def test_can_resume_answers_for_each_format() -> None:
    yes = subprocess.run([PY, "-m", "superd", "--can-resume", str(FORMAT)],
                         capture_output=True, text=True, timeout=DEADLINE)
    assert yes.returncode == 0 and f"reads state format {FORMAT}" in yes.stdout
    no = subprocess.run([PY, "-m", "superd", "--can-resume", "999"], capture_output=True,
                        text=True, timeout=DEADLINE)
    assert no.returncode == 1 and "not 999" in no.stdout


def test_a_failed_check_says_why() -> None:
    assert verdict(0, b"superd 1.0 reads state format 1\n") is None
    assert "cannot take over: ValueError: boom" in (
        verdict(1 << 8, b"Traceback:\n  x\nValueError: boom\n\n") or "")
    assert "killed by SIGKILL" in (verdict(signal.SIGKILL, b"") or "")


def test_a_failed_exec_leaves_everything_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    state = {"pidfile": read_end, "control": write_end,
             "workers": {"sockets": {}, "notify": None, "logs": {}}}

    def failing_exec(path: str, argv: list[str]) -> None:
        assert os.get_inheritable(read_end) and os.get_inheritable(write_end)
        assert signal.SIGCHLD in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        raise OSError(2, "No such file or directory")

    monkeypatch.setattr(os, "execv", failing_exec)
    fds_before = set(os.listdir("/proc/self/fd"))
    try:
        reason = exec_image(state)
        assert "No such file or directory" in reason
        assert not os.get_inheritable(read_end) and not os.get_inheritable(write_end)
        assert signal.SIGCHLD not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert set(os.listdir("/proc/self/fd")) == fds_before  # the memfd is closed
    finally:
        os.close(read_end)
        os.close(write_end)


def test_more_than_three_crashes_in_the_window_are_one_too_many(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    crashes = CrashCount()
    assert [crashes.allows_another() for _ in range(4)] == [True, True, True, False]
    now[0] += 61  # the window has passed: they no longer count
    assert crashes.allows_another()
    carried = CrashCount(crashes.times)  # as a re-exec hands them on
    assert carried.times == [1061.0]


def test_a_reexec_is_refused_during_a_reload_a_shutdown_or_another_reexec(
        tmp_path: Path) -> None:
    from superd.config import load
    from superd.daemon import Daemon

    path = tmp_path / "superd.yaml"
    path.write_text("workers: {}\n")
    daemon = Daemon(load(str(path)))
    answers: list[str | None] = []
    try:
        daemon.reloading = True
        daemon.reexec("request", answers.append)
        daemon.reloading = False
        daemon.checking = True
        daemon.reexec("request", answers.append)
        daemon.checking = False
        daemon.shutdown_timer = daemon.loop.call_later(60, lambda: None)
        daemon.reexec("request", answers.append)
    finally:
        daemon.loop.close()
    assert answers == ["a reload is being applied; try again once it is done",
                       "a re-exec is already under way", "superd is shutting down"]
