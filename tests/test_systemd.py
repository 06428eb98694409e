"""superd at home under systemd: notify both ways, sockets, readiness, deps."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from superd.deps import dependents, start_order
from superd.notify import status_summary
from superd.protocol import Kind
from superd.readiness import parse_notify
from support import REPO, Client, Superd, wait_for

PY = sys.executable

# A pre-forked server: accepts on fd 3 (LISTEN_FDS), answers with its pid.
FD3_SERVER = r"""
import os, socket, sys
assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID"
assert os.environ["LISTEN_FDS"] == "1", "LISTEN_FDS"
name = os.environ["LISTEN_FDNAMES"]
server = socket.socket(fileno=3)
while True:
    conn, _ = server.accept()
    conn.recv(100)
    conn.sendall(f"{name} {os.getpid()}".encode())
    conn.close()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(port: int, timeout: float = 20.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(b"hi")
        return conn.recv(100).decode()


def fd3_worker(**keys: object) -> dict[str, object]:
    return {"command": [PY, "-c", FD3_SERVER], "startsecs": "200ms", "sockets": ["web"],
            **keys}


# -- pure parts ---------------------------------------------------------------

def test_start_order_puts_dependencies_first() -> None:
    graph = {"web": ("db", "cache"), "db": (), "cache": ("db",), "cron": ()}
    order = start_order(graph)
    assert order == ["db", "cache", "web", "cron"]
    for name, needs in graph.items():
        assert all(order.index(need) < order.index(name) for need in needs)
    assert dependents(graph, "db") == ["web", "cache"]
    with pytest.raises(ValueError, match="cycle"):
        start_order({"a": ("b",), "b": ("a",)})


def test_notify_payload_and_summary() -> None:
    assert parse_notify(b"READY=1\nSTATUS=a=b\njunk") == {"READY": "1", "STATUS": "a=b"}
    assert status_summary(["RUNNING"] * 5 + ["BACKOFF"]) == "5 running, 1 backoff"
    assert status_summary([]) == "no workers"


# -- systemd units --------------------------------------------------------------

@pytest.mark.parametrize("unit", ["superd.service", "superd-user.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's binary exists: point it at a real one.
    fake = tmp_path / "superd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    text = (REPO / "systemd" / unit).read_text()
    assert "/usr/local/bin/superd" in text
    (tmp_path / unit).write_text(text.replace("/usr/local/bin/superd", str(fake)))
    args = [analyze, "verify"]
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="warning")
    if unit == "superd-user.service":
        args.append("--user")
        (tmp_path / "xdg").mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")  # the user manager's %t
    result = subprocess.run([*args, str(tmp_path / unit)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert unit not in result.stderr, result.stderr  # no warnings about our unit


# -- RuntimeDirectory= / LogsDirectory= -------------------------------------------------

def superctl_with_config(superd: Superd, env: dict[str, str], *args: str
                         ) -> subprocess.CompletedProcess[str]:
    """superctl finding the socket the way a user's does: from the config file."""
    return subprocess.run([PY, "-m", "superd.cli", "-c", str(superd.config_path), *args],
                          env=env, capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


def use_systemd_directories(superd: Superd) -> tuple[Path, Path]:
    runtime, logs = superd.folder / "runtime", superd.folder / "logs"
    runtime.mkdir()  # systemd makes both before ExecStart
    logs.mkdir()
    # Several folders come colon-separated; superd takes the first.
    superd.env["RUNTIME_DIRECTORY"] = f"{runtime}:{superd.folder / 'second'}"
    superd.env["LOGS_DIRECTORY"] = str(logs)
    return runtime, logs


def test_default_paths_go_to_systemd_runtime_and_logs_directories(superd: Superd) -> None:
    runtime, logs = use_systemd_directories(superd)
    superd.socket, superd.pidfile = str(runtime / "superd.sock"), runtime / "superd.pid"
    superd.start({"w": {"command": ["sh", "-c", "echo hello; exec sleep 600"],
                        "startsecs": 0}})
    superd.wait_state("w", "RUNNING")
    assert Path(superd.socket).is_socket()
    worker_log = logs / "w.out.log"
    wait_for(lambda: worker_log.exists() and "hello" in worker_log.read_text(),
             what="the worker's output in $LOGS_DIRECTORY")
    wait_for(lambda: (logs / "superd.log").exists() and (logs / "superd.log").read_text(),
             what="superd's own log in $LOGS_DIRECTORY")
    assert not (superd.folder / "run").exists()
    assert not (superd.folder / "log").exists()
    assert not (superd.folder / "second").exists()
    # superctl -c reads the same config in the same environment: same socket.
    found = superctl_with_config(superd, superd.env, "status")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split("\n")[1].split()[:2] == ["w", "RUNNING"]
    # Without the variable (a login shell) it looks beside the config, as the daemon would.
    elsewhere = {key: value for key, value in superd.env.items()
                 if key != "RUNTIME_DIRECTORY"}
    lost = superctl_with_config(superd, elsewhere, "status")
    assert lost.returncode == 4, lost.stdout + lost.stderr
    assert str(superd.folder / "run" / "superd.sock") in lost.stderr


def test_paths_in_the_config_win_over_systemd_directories(superd: Superd) -> None:
    runtime, logs = use_systemd_directories(superd)
    mine = superd.folder / "mine"
    superd.socket, superd.pidfile = str(mine / "s.sock"), mine / "s.pid"
    superd.start({"w": {"command": ["sh", "-c", "echo hello; exec sleep 600"],
                        "startsecs": 0}},
                 daemon={"socket": superd.socket, "pidfile": str(superd.pidfile),
                         "log_dir": str(mine / "logs"), "log_file": str(mine / "own.log")})
    superd.wait_state("w", "RUNNING")
    worker_log = mine / "logs" / "w.out.log"
    wait_for(lambda: worker_log.exists() and "hello" in worker_log.read_text(),
             what="the worker's output in daemon.log_dir")
    assert (mine / "own.log").exists()
    assert os.listdir(runtime) == [] and os.listdir(logs) == []
    found = superctl_with_config(superd, superd.env, "status", "w")
    assert found.returncode == 0, found.stderr


# -- superd -> systemd ------------------------------------------------------------

def test_foreground_sends_ready_status_stopping_in_order(superd: Superd) -> None:
    superd.write_config({"a": {"command": ["sleep", "600"], "startsecs": "200ms"}})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0superd-test-" + superd.tag)  # an abstract address, as systemd uses
    listener.settimeout(20)
    env = dict(superd.env, NOTIFY_SOCKET="@superd-test-" + superd.tag)
    daemon = subprocess.Popen([PY, "-m", "superd", "--foreground", "-c",
                               str(superd.config_path)], env=env, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        messages = [listener.recv(4096).decode()]
        superd.wait_state("a", "RUNNING")
        while not messages[-1].startswith("STATUS=1 running"):
            messages.append(listener.recv(4096).decode())
        daemon.send_signal(signal.SIGTERM)
        while messages[-1] != "STOPPING=1":
            messages.append(listener.recv(4096).decode())
        assert daemon.wait(20) == 0
        assert messages[0] == "READY=1"
        assert messages[1].startswith("STATUS=")
        assert messages[-1] == "STOPPING=1"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()


# -- workers -> superd ------------------------------------------------------------

def test_notify_worker_with_real_systemd_notify(superd: Superd) -> None:
    notifier = shutil.which("systemd-notify")
    if notifier is None:
        pytest.skip("systemd-notify is not installed")
    gate = superd.folder / "go"
    script = (f"while [ ! -e {gate} ]; do sleep 0.02; done; "
              f"{notifier} --ready --status='serving 3 clients'; exec sleep 600")
    superd.start({"n": {"command": ["sh", "-c", script], "ready": "notify",
                        "startsecs": "30s"}})
    row = superd.status("n")
    assert row["state"] == "STARTING"
    time.sleep(0.5)  # long past any timer a plain startsecs worker would use
    assert superd.status("n")["state"] == "STARTING"
    gate.touch()
    row = superd.wait_state("n", "RUNNING")
    assert row["status_text"] == "serving 3 clients"
    assert "serving 3 clients" in superd.ctl("status", "n").stdout


def test_notify_worker_that_never_notifies_goes_to_backoff(superd: Superd) -> None:
    superd.start({"n": {"command": ["sleep", "600"], "ready": "notify",
                        "start_timeout": "300ms", "startretries": 1}})
    wait_for(lambda: superd.status("n")["state"] in ("BACKOFF", "FATAL"), what="backoff")
    row = superd.wait_state("n", "FATAL")
    assert row["exit_status"] == -signal.SIGKILL


# Sends READY=1 to $NOTIFY_SOCKET as systemd-notify would, with credentials.
PY_NOTIFY = ("import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
             "a = os.environ['NOTIFY_SOCKET']; "
             "s.sendto(b'READY=1', '\\0' + a[1:] if a.startswith('@') else a)")


def test_notify_worker_slower_than_startsecs_gets_running(superd: Superd) -> None:
    notifier = shutil.which("systemd-notify")
    ready = f"{notifier} --ready" if notifier else f"{PY} -c \"{PY_NOTIFY}\""
    script = f"sleep 2; {ready}; exec sleep 600"
    superd.start({"n": {"command": ["sh", "-c", script], "ready": "notify"}})  # startsecs 1s
    first = superd.status("n")
    row = superd.wait_state("n", "RUNNING")
    assert row["pid"] == first["pid"] and row["restarts"] == 0  # never cut short
    assert row["uptime"] >= 2.0


def test_tcp_worker_that_never_listens_fails_at_start_timeout(superd: Superd) -> None:
    port = free_port()
    superd.start({"t": {"command": ["sleep", "600"], "ready": {"tcp": port},
                        "start_timeout": "1s", "startretries": 1,
                        "backoff": {"initial": "10ms", "max": "20ms"}}})
    began = time.monotonic()
    row = superd.wait_state("t", "FATAL")
    assert time.monotonic() - began >= 1.5  # two tries of 1 s each
    assert row["exit_status"] == -signal.SIGKILL and row["restarts"] == 1


def test_startretries_forever_keeps_trying(superd: Superd) -> None:
    tries = superd.folder / "tries"
    command = ["sh", "-c", f"echo x >> {tries}; exit 1"]
    superd.start({"a": {"command": command, "startretries": "forever",
                        "backoff": {"initial": "10ms", "max": "20ms"}}})

    def many_tries() -> bool:
        assert superd.status("a")["state"] in ("STARTING", "BACKOFF")  # never FATAL
        return tries.exists() and len(tries.read_text().split()) >= 30

    wait_for(many_tries, what="30 tries")


def test_datagram_from_unknown_pid_is_ignored(superd: Superd) -> None:
    superd.start({"n": {"command": ["sleep", "600"], "ready": "notify", "startsecs": "30s"}})
    address = superd.socket + ".notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"READY=1", address)
    assert superd.call("ping")  # the daemon read it and lives on
    assert superd.status("n")["state"] == "STARTING"


def test_tcp_ready_worker(superd: Superd) -> None:
    port = free_port()
    gate = superd.folder / "go"
    server = (f"import os, socket, time\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
              f"s = socket.create_server(('127.0.0.1', {port}))\n"
              f"while True: s.accept()[0].close()\n")
    superd.start({"t": {"command": [PY, "-c", server], "ready": {"tcp": port},
                        "startsecs": "30s"}})
    time.sleep(0.3)
    assert superd.status("t")["state"] == "STARTING"
    gate.touch()
    superd.wait_state("t", "RUNNING")


# -- sockets handed to workers -------------------------------------------------------

def test_worker_accepts_on_fd3_over_superd_socket(superd: Superd) -> None:
    port = free_port()
    unix_path = superd.folder / "app.sock"
    superd.start({"w": fd3_worker(), "u": fd3_worker(sockets=["app"])},
                 sockets={"web": {"listen": f"tcp://127.0.0.1:{port}"},
                          "app": {"listen": f"unix://{unix_path}", "mode": "0660"}})
    pid = superd.wait_state("w", "RUNNING")["pid"]
    assert ask(port) == f"web {pid}"
    assert oct(unix_path.stat().st_mode & 0o777) == "0o660"
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(20)
        conn.connect(str(unix_path))
        conn.sendall(b"hi")
        assert conn.recv(100).decode().startswith("app ")
    superd.stop()
    assert not unix_path.exists()


def test_bind_failure_is_a_startup_error(superd: Superd) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        superd.write_config({"w": fd3_worker()},
                            sockets={"web": {"listen": f"tcp://127.0.0.1:{port}"}})
        result = superd.run("-c", str(superd.config_path))
    assert result.returncode == 1
    assert f"cannot listen on tcp://127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_killing_one_of_two_instances_refuses_no_connection(superd: Superd) -> None:
    port = free_port()
    superd.start({"w": fd3_worker(numprocs=2)},
                 sockets={"web": {"listen": f"tcp://127.0.0.1:{port}", "backlog": 256}})
    victim = superd.wait_state("w:0", "RUNNING")["pid"]
    superd.wait_state("w:1", "RUNNING")
    answered, refused, reset = 0, 0, 0
    deadline = time.monotonic() + 3.0
    killed = False
    while time.monotonic() < deadline and answered < 2000:
        if answered == 50 and not killed:
            os.kill(victim, signal.SIGKILL)
            killed = True
        try:
            assert ask(port).startswith("web ")
            answered += 1
        except ConnectionRefusedError:
            refused += 1
        except ConnectionResetError:
            reset += 1  # the one connection the victim held when it died
    print(f"answered={answered} refused={refused} reset={reset}")
    assert killed and answered > 50
    assert refused == 0
    assert reset <= 1
    wait_for(lambda: superd.status("w:0")["pid"] not in (None, victim), what="w:0 respawn")


def test_restart_keeps_queued_connections_for_the_new_instance(superd: Superd) -> None:
    port = free_port()
    superd.start({"w": fd3_worker()},
                 sockets={"web": {"listen": f"tcp://127.0.0.1:{port}"}})
    old = superd.wait_state("w", "RUNNING")["pid"]
    assert superd.call("stop", {"names": ["w"]})[0]["ok"]
    # Nobody accepts now, yet the kernel completes connects into the backlog.
    waiting = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(5)]
    try:
        for conn in waiting:
            conn.sendall(b"hi")
        assert superd.call("start", {"names": ["w"]})[0]["ok"]
        new = superd.status("w")["pid"]
        assert new != old
        for conn in waiting:
            assert conn.recv(100).decode() == f"web {new}"
    finally:
        for conn in waiting:
            conn.close()


# -- dependencies -----------------------------------------------------------------------

def transitions(superd: Superd) -> list[tuple[str, str]]:
    """(instance, new state) in the order the daemon logged them."""
    found = []
    for line in (superd.folder / "log" / "superd.log").read_text().splitlines():
        match = re.search(r" INFO (\w+): \w+ -> (\w+)", line)
        if match:
            found.append((match[1], match[2]))
    return found


def state_events_until(client: Client, last: tuple[str, str]) -> list[tuple[str, str]]:
    """(instance, new state) from pushed state events, up to and with `last`."""
    found: list[tuple[str, str]] = []
    while last not in found:
        message = client.receive()
        assert message is not None, "daemon closed the event stream"
        if message[0] == Kind.EVENT and message[1]["event"] == "state":
            found.append((message[1]["name"], message[1]["to"]))
    return found


def test_dependency_order_on_start_and_reverse_on_stop(superd: Superd) -> None:
    sleeper = ["sleep", "600"]
    superd.start({
        "web": {"command": sleeper, "startsecs": "100ms", "depends_on": ["api"]},
        "api": {"command": sleeper, "startsecs": "300ms", "depends_on": ["db"]},
        "db": {"command": sleeper, "startsecs": "300ms"},
    })
    for name in ("db", "api", "web"):
        superd.wait_state(name, "RUNNING")
    boot = transitions(superd)
    assert boot.index(("api", "STARTING")) > boot.index(("db", "RUNNING"))
    assert boot.index(("web", "STARTING")) > boot.index(("api", "RUNNING"))
    assert all(row["ok"] for row in superd.call("stop", {"names": ["all"]}))
    stops = [name for name, state in transitions(superd) if state == "STOPPING"]
    assert stops == ["web", "api", "db"]
    stopped = transitions(superd)
    assert stopped.index(("api", "STOPPING")) > stopped.index(("web", "STOPPED"))
    assert stopped.index(("db", "STOPPING")) > stopped.index(("api", "STOPPED"))
    # Starting web alone starts what it needs first, each once the previous runs.
    # (From events: within a second of boot, the log holds these repeats back.)
    events = superd.client()
    assert events.result("subscribe") == {}
    rows = superd.call("start", {"names": ["web"]})
    assert [row["name"] for row in rows] == ["web"] and rows[0]["ok"]
    again = state_events_until(events, ("web", "RUNNING"))
    events.close()
    assert [name for name, state in again if state == "STARTING"] == ["db", "api", "web"]
    assert again.index(("api", "STARTING")) > again.index(("db", "RUNNING"))
    assert again.index(("web", "STARTING")) > again.index(("api", "RUNNING"))


def test_shutdown_stops_dependents_first(superd: Superd) -> None:
    sleeper = ["sleep", "600"]
    superd.start({"db": {"command": sleeper, "startsecs": 0},
                  "app": {"command": sleeper, "startsecs": 0, "depends_on": ["db"]}})
    superd.wait_state("app", "RUNNING")
    superd.stop()
    log = transitions(superd)
    assert log.index(("db", "STOPPING")) > log.index(("app", "STOPPED"))


def test_dependency_cycle_is_a_config_error(superd: Superd) -> None:
    superd.write_config({"a": {"command": ["true"], "depends_on": ["b"]},
                         "b": {"command": ["true"], "depends_on": ["a"]}})
    result = superd.run("--check", "-c", str(superd.config_path))
    assert result.returncode == 2
    assert "cycle" in result.stderr and "superd.yaml:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bundled_sockets_example_works(superd: Superd) -> None:
    port, cache_port = free_port(), free_port()
    for name in ("sockets.yaml", "fd3_server.py"):
        text = (REPO / "config" / name).read_text()
        text = text.replace("8081", str(port)).replace("8082", str(cache_port))
        (superd.folder / name).write_text(text)
    superd.config_path = superd.folder / "sockets.yaml"
    superd.socket = str(superd.folder / "run" / "sockets.sock")
    superd.pidfile = superd.folder / "run" / "sockets.pid"
    superd.start()
    for name in ("cache", "web:0", "web:1"):
        superd.wait_state(name, "RUNNING")
    assert superd.status("web:0")["status_text"] == "accepting on http"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200 OK") and b"hello from web:" in reply


def test_watchdog_and_reload_messages(superd: Superd, monkeypatch: pytest.MonkeyPatch) -> None:
    from superd.loop import Loop
    from superd.notify import SystemdNotifier, notify_ready, notify_reloading

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(superd.folder / "n.sock"))
    listener.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(superd.folder / "n.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    loop = Loop()
    try:
        SystemdNotifier(loop.call_later)  # sends now, then every 50 ms
        assert listener.recv(100) == b"WATCHDOG=1"
        begun = time.monotonic()
        loop.call_later(0.12, loop.stop)
        loop.run()
        assert listener.recv(100) == b"WATCHDOG=1"
        assert listener.recv(100) == b"WATCHDOG=1"
        assert time.monotonic() - begun >= 0.1
    finally:
        loop.close()
    assert notify_reloading()
    reloading = listener.recv(100).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
    assert abs(usec / 1e6 - time.monotonic()) < 5
    assert notify_ready() and listener.recv(100) == b"READY=1"
    listener.close()


def test_sockets_land_on_fds_in_the_workers_order(superd: Superd) -> None:
    ports = [free_port(), free_port(), free_port()]
    report = ("import os, socket, time\n"
              "names = [socket.socket(fileno=fd).getsockname()[1] for fd in (3, 4, 5)]\n"
              "print(os.environ['LISTEN_FDS'], os.environ['LISTEN_FDNAMES'], *names,"
              " flush=True)\n"
              "time.sleep(600)\n")
    superd.start({"w": {"command": [PY, "-c", report], "startsecs": 0,
                        "sockets": ["c", "a", "b"]}},
                 sockets={name: {"listen": f"tcp://127.0.0.1:{port}"}
                          for name, port in zip("abc", ports, strict=True)})
    log = superd.log_file("w")
    line = wait_for(lambda: log.exists() and log.read_text().strip(), what="worker report")
    assert line.split() == ["3", "c:a:b", str(ports[2]), str(ports[0]), str(ports[1])]
