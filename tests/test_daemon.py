"""The daemon end to end: real superd, real workers, the real socket."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from superd.protocol import HEADER, MAX_REQUEST, Kind, encode
from support import Client, Superd, alive, pids_tagged, wait_for

SLEEPER = ["sleep", "600"]
PY = sys.executable


def worker(command: list[str], **keys: object) -> dict[str, object]:
    return {"command": command, "startsecs": "200ms", **keys}


def test_detaches_and_is_ready_when_launcher_exits(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER), "b": worker(SLEEPER, numprocs=2)})
    assert alive(superd.pid or 0)
    assert os.path.exists(superd.socket)
    assert oct(os.stat(superd.socket).st_mode & 0o777) == "0o600"
    rows = superd.status()
    # Launched before the launcher exited: every autostart worker has a pid.
    assert [r["name"] for r in rows] == ["a", "b:0", "b:1"]
    assert all(r["pid"] for r in rows)
    # Detached into a new session, and not its leader, so it can never
    # acquire a controlling terminal again.
    assert os.getsid(superd.pid or 0) not in (os.getsid(0), superd.pid)
    ping = superd.call("ping")
    assert ping["pid"] == superd.pid and ping["version"]


def test_graceful_shutdown_removes_socket_and_pidfile(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    worker_pid = superd.wait_state("a", "RUNNING")["pid"]
    result = superd.ctl("shutdown")
    assert result.returncode == 0, result.stderr
    assert not alive(worker_pid)
    wait_for(lambda: not os.path.exists(superd.pidfile), what="pidfile removal")
    assert not os.path.exists(superd.socket)


def test_second_daemon_on_same_socket_is_refused(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    first = superd.pid
    result = superd.run("-c", str(superd.config_path))
    assert result.returncode == 1
    assert "already running" in result.stderr and len(result.stderr.splitlines()) == 1
    assert superd.pid == first and alive(first or 0)


def test_second_daemon_with_another_pidfile_leaves_the_live_one_alone(
        superd: Superd, tmp_path: Path) -> None:
    superd.start({"a": worker(SLEEPER)})
    notify_socket = superd.socket + ".notify"
    assert os.path.exists(notify_socket)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"daemon": {"socket": superd.socket,
                                                "pidfile": str(tmp_path / "other.pid")},
                                     "workers": {"b": worker(SLEEPER)}}))
    result = superd.run("-c", str(other))
    assert result.returncode == 1 and "live daemon" in result.stderr, result.stderr
    assert os.path.exists(notify_socket) and os.path.exists(superd.socket)
    assert superd.call("ping")["pid"] == superd.pid


def test_status_of_a_daemon_without_workers(superd: Superd) -> None:
    superd.start({})
    result = superd.ctl("status")
    assert result.returncode == 0, result.stderr
    assert superd.call("status", {"names": []}) == []


def test_stale_pidfile_and_socket_are_taken_over(superd: Superd) -> None:
    superd.write_config({"a": worker(SLEEPER)})
    run = superd.folder / "run"
    run.mkdir()
    (run / "superd.pid").write_text("999999\n")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(superd.socket)
    stale.close()  # the file stays, nobody listens: a dead daemon's socket
    superd.start()
    assert superd.pid != 999999
    assert superd.call("ping")["pid"] == superd.pid


def test_bad_config_fails_start_with_one_line(superd: Superd) -> None:
    superd.config_path.write_text("workers:\n  a:\n    command: [sleep, '1']\n    bogus: 1\n")
    result = superd.run("-c", str(superd.config_path))
    assert result.returncode == 2
    assert f"{superd.config_path}:4: workers.a.bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_errors_with_lines(superd: Superd) -> None:
    superd.config_path.write_text(
        "workers:\n  a:\n    command: []\n    startsecs: soon\n")
    result = superd.run("--check", "-c", str(superd.config_path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{superd.config_path}:3: workers.a.command") for line in lines)
    assert any(line.startswith(f"{superd.config_path}:4: workers.a.startsecs") for line in lines)
    good = superd.write_config({"a": worker(SLEEPER)})
    assert superd.run("--check", "-c", str(good)).returncode == 0


def test_kill_9_worker_is_replaced(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    old = superd.wait_state("a", "RUNNING")
    os.kill(old["pid"], signal.SIGKILL)
    new = wait_for(lambda: (row := superd.status("a"))["pid"] not in (None, old["pid"])
                   and row, what="replacement")
    assert new["restarts"] == old["restarts"] + 1
    assert superd.wait_state("a", "RUNNING")["pid"] == new["pid"]


def test_instant_exit_goes_backoff_then_fatal(superd: Superd) -> None:
    tries = superd.folder / "tries"
    command = ["sh", "-c", f"echo x >> {tries}; exit 1"]
    superd.start({"a": worker(command, startsecs="1s", startretries=3,
                              backoff={"initial": "50ms", "max": "200ms"})})
    seen: set[str] = set()

    def fatal() -> bool:
        seen.add(superd.status("a")["state"])
        return "FATAL" in seen

    wait_for(fatal, what="FATAL")
    assert "BACKOFF" in seen or len(tries.read_text().split()) == 4
    assert len(tries.read_text().split()) == 4  # first try + startretries
    row = superd.status("a")
    assert row["exit_status"] == 1 and row["pid"] is None
    # FATAL stays FATAL until a user starts it.
    time.sleep(0.3)
    assert len(tries.read_text().split()) == 4


def test_autorestart_never_leaves_exited(superd: Superd) -> None:
    superd.start({"a": worker(["sh", "-c", "sleep 0.5; exit 0"], autorestart="never")})
    row = superd.wait_state("a", "EXITED")
    assert row["exit_status"] == 0 and row["restarts"] == 0


def test_autorestart_on_failure_respects_exitcodes(superd: Superd) -> None:
    script = "sleep 0.4; exit $CODE"
    superd.start({
        "expected": worker(["sh", "-c", script], autorestart="on-failure",
                           exitcodes=[0, 3], environment={"CODE": "3"}),
        "failing": worker(["sh", "-c", script], autorestart="on-failure",
                          exitcodes=[0], environment={"CODE": "4"}),
    })
    assert superd.wait_state("expected", "EXITED")["exit_status"] == 3
    wait_for(lambda: superd.status("failing")["restarts"] >= 1, what="restart on failure")
    assert superd.status("expected")["restarts"] == 0


def test_stop_kills_grandchildren(superd: Superd) -> None:
    pidfile = superd.folder / "grandchild.pid"
    command = ["sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"]
    superd.start({"a": worker(command)})
    superd.wait_state("a", "RUNNING")
    grandchild = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(),
                              what="grandchild pid"))
    assert alive(grandchild)
    result = superd.ctl("stop", "a")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not alive(grandchild), what="grandchild to die")
    assert superd.status("a")["state"] == "STOPPED"


def test_worker_ignoring_sigterm_is_killed_after_stoptimeout(superd: Superd) -> None:
    command = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
    superd.start({"a": worker(command, stoptimeout="500ms")})
    superd.wait_state("a", "RUNNING")
    began = time.monotonic()
    rows = superd.call("stop", {"names": ["a"]})
    elapsed = time.monotonic() - began
    assert rows == [{"name": "a", "state": "STOPPED", "ok": True, "error": None}]
    assert 0.45 < elapsed < 10
    assert superd.status("a")["exit_status"] == -signal.SIGKILL


def test_daemon_sigkilled_leaves_no_worker(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER, numprocs=3)})
    rows = wait_for(lambda: all(rows := superd.status()) and all(r["pid"] for r in rows)
                    and rows, what="pids")
    os.kill(superd.pid or 0, signal.SIGKILL)
    wait_for(lambda: not any(alive(r["pid"]) for r in rows), what="workers to die")
    wait_for(lambda: not pids_tagged(superd.tag), what="no tagged process left")


def test_worker_gets_environment_and_no_daemon_fds(superd: Superd) -> None:
    probe = ("import os; e = os.environ; facts = (sorted(os.listdir('/proc/self/fd')), "
             "e['SUPERD_NAME'], e['GREETING'], os.getsid(0) == os.getpid(), os.getcwd()); "
             "open('probe.' + e['SUPERD_INSTANCE'], 'w').write(repr(facts)); "
             "import time; time.sleep(600)")
    superd.start({"p": worker([PY, "-c", probe], numprocs=2, environment={"GREETING": "hi"},
                              directory=str(superd.folder))})
    for index in (0, 1):
        out = superd.folder / f"probe.{index}"
        facts = eval(wait_for(lambda o=out: o.exists() and o.read_text(), what="probe output"))
        fds, name, greeting, leader, cwd = facts
        assert fds == ["0", "1", "2", "3"]  # 3 is listdir's own handle
        assert name == f"p:{index}" and greeting == "hi"
        assert leader and cwd == str(superd.folder)


def test_stop_start_restart_wait_for_states(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER, numprocs=2), "b": worker(SLEEPER, autostart=False)})
    assert superd.status("b")["state"] == "STOPPED"
    started = superd.call("start", {"names": ["b"]})
    assert started == [{"name": "b", "state": "RUNNING", "ok": True, "error": None}]
    before = {r["name"]: r["pid"] for r in superd.status()}
    restarted = superd.call("restart", {"names": ["a:1"]})
    assert [r["state"] for r in restarted] == ["RUNNING"]
    after = {r["name"]: r["pid"] for r in superd.status()}
    assert after["a:0"] == before["a:0"] and after["a:1"] != before["a:1"]
    stopped = superd.call("stop", {"names": ["all"]})
    assert {r["state"] for r in stopped} == {"STOPPED"} and len(stopped) == 3


def test_start_of_failing_worker_reports_failure(superd: Superd) -> None:
    superd.start({"bad": worker(["false"], autostart=False, startretries=1,
                                backoff={"initial": "10ms", "max": "20ms"})})
    result = superd.ctl("start", "bad")
    assert result.returncode == 1
    assert "FATAL" in result.stdout + result.stderr


def test_signal_reaches_process_group(superd: Superd) -> None:
    marker = superd.folder / "got-usr1"
    command = ["sh", "-c", f"trap 'echo yes > {marker}' USR1; while :; do sleep 0.1; done"]
    superd.start({"a": worker(command)})
    superd.wait_state("a", "RUNNING")
    rows = superd.call("signal", {"signal": "USR1", "names": ["a"]})
    assert rows[0]["ok"]
    wait_for(marker.exists, what="USR1 trap")
    reply = superd.client().call("signal", {"signal": "NOPE", "names": ["a"]})
    assert reply["ok"] is False and reply["error"]["code"] == "bad_args"


def test_bad_frames_close_only_that_connection(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    bystander = superd.client()
    assert bystander.call("ping")["ok"]
    body = b'{"id": 1, "cmd": "ping", "args": {}}'
    bad_frames = [
        struct.pack("!2sBBI", b"XX", 1, 1, len(body)) + body,  # bad magic
        struct.pack("!2sBBI", b"SD", 9, 1, len(body)) + body,  # unknown version
        struct.pack("!2sBBI", b"SD", 1, 1, MAX_REQUEST + 1),  # body over the limit
        HEADER.pack(b"SD", 1, 1, 2) + b"[]",  # not an object
        HEADER.pack(b"SD", 1, 1, 3) + b"{x}",  # not JSON
    ]
    for frame in bad_frames:
        client = superd.client()
        client.send_raw(frame)
        kind, reply = client.receive() or (None, {})
        assert kind == Kind.REPLY
        assert reply["id"] is None and reply["ok"] is False
        assert reply["error"]["code"] == "bad_frame"
        assert client.receive() is None  # closed
        client.close()
    unknown = bystander.call("frobnicate")
    assert unknown["ok"] is False and unknown["error"]["code"] == "unknown_command"
    assert bystander.call("status", {"names": 5})["error"]["code"] == "bad_args"
    assert bystander.call("ping")["ok"]  # still open, still served
    assert superd.status("a")["state"] in ("STARTING", "RUNNING")


def test_pipelined_requests_are_answered_in_order(superd: Superd) -> None:
    superd.start({"slow": worker(SLEEPER, startsecs="500ms", autostart=False)})
    client = superd.client()
    ids = [client.send("start", {"names": ["slow"]}), client.send("ping"),
           client.send("status")]
    replies = [client.receive() for _ in ids]
    assert [r[1]["id"] for r in replies if r] == ids
    assert replies[0] and replies[0][1]["result"][0]["state"] == "RUNNING"
    client.close()


def test_half_frame_client_does_not_block_others(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    stuck = superd.client()
    stuck.send_raw(encode(Kind.REQUEST, {"id": 1, "cmd": "ping", "args": {}})[:5])
    began = time.monotonic()
    assert superd.call("ping")["pid"] == superd.pid
    assert time.monotonic() - began < 2
    stuck.close()


def test_superctl_exit_codes(superd: Superd, tmp_path: Path) -> None:
    superd.start({"a": worker(SLEEPER), "b": worker(SLEEPER, autostart=False)})
    superd.wait_state("a", "RUNNING")
    assert superd.ctl("status", "a").returncode == 0
    result = superd.ctl("status")
    assert result.returncode == 3 and "STOPPED" in result.stdout
    unknown = superd.ctl("status", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    gone = superd.ctl("-s", str(tmp_path / "absent.sock"), "ping")
    assert gone.returncode == 4 and len(gone.stderr.splitlines()) == 1
    assert superd.ctl("bogus-command").returncode == 2


def test_waiting_start_does_not_block_other_clients(superd: Superd) -> None:
    superd.start({"slow": worker(SLEEPER, startsecs="3s", autostart=False)})
    waiting = superd.client()
    request = waiting.send("start", {"names": ["slow"]})
    began = time.monotonic()
    assert superd.call("ping")["pid"] == superd.pid
    assert superd.status("slow")["state"] == "STARTING"
    assert time.monotonic() - began < 2.5
    kind, reply = waiting.receive() or (None, {})
    assert reply["id"] == request and reply["result"][0]["state"] == "RUNNING"
    waiting.close()


def test_foreground_notifies_systemd_and_stops_on_sigterm(superd: Superd) -> None:
    superd.write_config({"a": worker(SLEEPER)})
    notify_path = str(superd.folder / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(20)
    env = dict(superd.env, NOTIFY_SOCKET=notify_path)
    daemon = subprocess.Popen([PY, "-m", "superd", "--foreground", "-c",
                               str(superd.config_path)], env=env, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)

    def next_message() -> bytes:
        message = listener.recv(4096)
        while message.startswith(b"STATUS="):  # summaries may come at any time
            message = listener.recv(4096)
        return message

    try:
        assert next_message() == b"READY=1"
        assert superd.call("ping")["pid"] == daemon.pid
        worker_pid = superd.wait_state("a", "RUNNING")["pid"]
        daemon.send_signal(signal.SIGHUP)  # a reload: RELOADING=1, then READY=1
        assert next_message().startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert next_message() == b"READY=1"
        assert superd.call("ping")["pid"] == daemon.pid
        daemon.send_signal(signal.SIGTERM)
        assert next_message() == b"STOPPING=1"
        _, stderr = daemon.communicate(timeout=20)
        assert daemon.returncode == 0
        assert not alive(worker_pid)
        assert "a: RUNNING -> STOPPING" in stderr and "Traceback" not in stderr
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()


def test_other_users_may_not_send_commands(superd: Superd) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    superd.start({"a": worker(SLEEPER)}, daemon={"socket_mode": "0666"})
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # connect as nobody: SO_PEERCRED records the effective uid
        try:
            os.chdir(os.path.dirname(superd.socket))
            os.seteuid(nobody.pw_uid)
            reply = Client(os.path.basename(superd.socket)).call("ping")
            os.write(write_end, reply["error"]["code"].encode() if not reply["ok"] else b"ok")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 100)
    os.close(read_end)
    os.waitpid(child, 0)
    assert answer == b"permission_denied"
    assert superd.call("ping")["pid"] == superd.pid  # root still may


def test_worker_runs_as_configured_user(superd: Superd) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    command = ["sh", "-c", "id -u; echo $HOME; exec sleep 600"]
    superd.start({"a": worker(command, user="nobody", directory="/")})
    out = superd.log_file("a")
    lines = wait_for(lambda: len(out.read_text().split()) == 2 and out.read_text().split())
    nobody = pwd.getpwnam("nobody")
    assert lines == [str(nobody.pw_uid), nobody.pw_dir]


def test_every_daemon_log_line_starts_with_its_local_time_to_the_millisecond(
        superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER, numprocs=3)})
    pid = superd.wait_state("a:0", "RUNNING")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: superd.status("a:0")["pid"] not in (None, pid), what="a restart")
    lines = (superd.folder / "log" / "superd.log").read_text().splitlines()
    assert len(lines) >= 8  # started, 3 instances up, a death and a restart
    stamp = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) [A-Z]+ ")
    for line in lines:
        match = stamp.match(line)
        assert match, line
        written = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
        assert abs(written - time.time()) < 120, line  # local time, and this run's
