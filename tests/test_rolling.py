"""Rolling restarts through a real daemon: a pre-forked HTTP server on a
shared `sockets:` socket keeps answering, with no connection refused, while
`restart --rolling` (or a reload of a `rolling: true` worker) replaces its
instances one at a time; a plain restart, for contrast, takes them all down.

Run with `pytest -s` to see the figures of each restart.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

from superd.protocol import Kind
from support import Client, Superd, wait_for

PY = sys.executable
READY_DELAY = 0.4  # how long each instance takes to get ready
ANSWER_DEADLINE = 5.0  # a request not answered in full by then is unanswered

# A pre-forked HTTP server: takes a moment to get ready, says READY=1, then
# answers every request on the shared fd 3 with its pid and VERSION.  On
# SIGTERM it stops accepting and exits once the request it is serving is done.
SERVER = r"""
import os, select, signal, socket, time

assert os.environ["LISTEN_FDS"] == "1" and os.environ["LISTEN_PID"] == str(os.getpid())
stopping = False

def stop(signum, frame):
    global stopping
    stopping = True

signal.signal(signal.SIGTERM, stop)
server = socket.socket(fileno=3)
server.setblocking(False)  # the instances share it: another may take a connection first
time.sleep(float(os.environ["READY_DELAY"]))
address = os.environ["NOTIFY_SOCKET"]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", "\0" + address[1:] if address.startswith("@") else address)
body = f"{os.getpid()} {os.environ['VERSION']}\n".encode()
answer = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
while not stopping:
    if not select.select([server], [], [], 0.05)[0]:
        continue
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        continue
    with conn:
        conn.settimeout(5)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        conn.sendall(answer)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def web_worker(folder: Path, version: str = "1", **keys: object) -> dict[str, object]:
    script = folder / "server.py"
    script.write_text(SERVER)
    return {"command": [PY, str(script)], "numprocs": 3, "ready": "notify",
            "start_timeout": "20s", "stoptimeout": "5s", "sockets": ["web"],
            "environment": {"VERSION": version, "READY_DELAY": str(READY_DELAY)}, **keys}


def start_web(superd: Superd, **keys: object) -> int:
    port = free_port()
    superd.write_config({"web": web_worker(superd.folder, **keys)},
                        sockets={"web": {"listen": f"tcp://127.0.0.1:{port}"}})
    superd.start()
    wait_for(lambda: all_running(superd), what="web:0..2 RUNNING")
    return port


def all_running(superd: Superd) -> bool:
    return all(row["state"] == "RUNNING" for row in superd.status("web"))


def pids(superd: Superd) -> dict[str, int]:
    return {row["name"]: row["pid"] for row in superd.status("web")}


class Traffic(threading.Thread):
    """Connects and sends a request as fast as it can until stopped, counting
    connections tried, refused (or reset) and unanswered."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tried = self.refused = self.unanswered = 0
        self.answers: set[str] = set()  # "PID VERSION" of each instance that answered
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.tried += 1
            try:
                answer = self.ask()
            except (ConnectionRefusedError, ConnectionResetError):
                self.refused += 1
                continue
            except OSError:  # a timeout, or an answer cut short
                self.unanswered += 1
                continue
            if answer is None:
                self.unanswered += 1
            else:
                self.answers.add(answer)

    def ask(self) -> str | None:
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=ANSWER_DEADLINE) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200") or not body.endswith(b"\n"):
            return None
        return body.decode().strip()


class RunningCount(threading.Thread):
    """Subscribed to the events: how many of the worker's instances are
    RUNNING after each state event, and the lowest that count gets."""

    def __init__(self, superd: Superd) -> None:
        super().__init__(daemon=True)
        self.client = Client(superd.socket)
        assert self.client.result("subscribe") == {}
        self.states = {row["name"]: row["state"] for row in superd.status("web")}
        self.lowest = self.running()
        self.events = 0
        self.stopping = threading.Event()

    def running(self) -> int:
        return sum(state == "RUNNING" for state in self.states.values())

    def run(self) -> None:
        self.client.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                message = self.client.receive()
            except TimeoutError:
                continue
            if message is None:
                return
            kind, event = message
            if kind == Kind.EVENT and event["event"] == "state" and event["name"] in self.states:
                self.states[event["name"]] = event["to"]
                self.events += 1
                self.lowest = min(self.lowest, self.running())


class Measured:
    """Traffic and the RUNNING count around one restart."""

    def __init__(self, superd: Superd, port: int, label: str) -> None:
        self.superd, self.label = superd, label
        self.traffic = Traffic(port)
        self.count = RunningCount(superd)

    def __enter__(self) -> Measured:
        self.count.start()
        self.traffic.start()
        wait_for(lambda: self.traffic.answers, what="traffic to flow")
        return self

    def __exit__(self, *exc: object) -> None:
        # The restart is over: let traffic meet the new instances a moment.
        tried = self.traffic.tried
        wait_for(lambda: self.traffic.tried > tried + 20, what="traffic after the restart")
        for thread in (self.traffic, self.count):
            thread.stopping.set()
            thread.join(ANSWER_DEADLINE + 5)
        self.count.client.close()
        traffic = self.traffic
        print(f"\n{self.label}: {traffic.tried} connections tried, {traffic.refused} refused, "
              f"{traffic.unanswered} unanswered; lowest RUNNING {self.count.lowest} of 3 "
              f"({self.count.events} state events)")

    @property
    def figures(self) -> dict[str, Any]:
        return {"refused": self.traffic.refused, "unanswered": self.traffic.unanswered,
                "lowest": self.count.lowest}


def test_rolling_restart_keeps_serving_and_a_plain_one_does_not(superd: Superd) -> None:
    port = start_web(superd)
    before = superd.status("web")
    with Measured(superd, port, "restart --rolling") as rolling:
        done = superd.ctl("restart", "--rolling", "web")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "web:0: restarted\nweb:1: restarted\nweb:2: restarted\n"
    assert rolling.figures == {"refused": 0, "unanswered": 0, "lowest": 2}
    after = superd.status("web")
    assert all(row["state"] == "RUNNING" for row in after)  # the reply came after the last
    assert not {row["pid"] for row in after} & {row["pid"] for row in before}
    # A user's restart is asked for, not a crash: not counted in `restarts`.
    assert [row["restarts"] for row in after] == [row["restarts"] for row in before] == [0] * 3
    new_pids = {str(row["pid"]) for row in after}
    assert new_pids <= {answer.split()[0] for answer in rolling.traffic.answers}

    with Measured(superd, port, "restart (plain)") as plain:
        done = superd.ctl("restart", "web")
    assert done.returncode == 0, done.stderr
    assert plain.figures["lowest"] == 0  # the test tells the two apart
    assert plain.figures["refused"] == 0  # superd holds the socket: connects wait, never fail


def test_reload_of_a_rolling_worker_restarts_it_one_at_a_time(superd: Superd) -> None:
    port = start_web(superd, rolling=True)
    before = pids(superd)
    superd.write_config({"web": web_worker(superd.folder, "2", rolling=True)},
                        sockets={"web": {"listen": f"tcp://127.0.0.1:{port}"}})
    with Measured(superd, port, "reload, rolling: true") as rolling:
        done = superd.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert "changed: web:0, web:1, web:2" in done.stdout
    # The reply waits for the roll: every instance is new and RUNNING already.
    after = superd.status("web")
    assert all(row["state"] == "RUNNING" for row in after)
    assert not {row["pid"] for row in after} & set(before.values())
    assert rolling.figures == {"refused": 0, "unanswered": 0, "lowest": 2}
    versions = {answer.split()[1] for answer in rolling.traffic.answers}
    assert versions == {"1", "2"}
    assert {f"{row['pid']} 2" for row in after} <= rolling.traffic.answers


def test_a_roll_stops_at_the_instance_that_fails(superd: Superd) -> None:
    # web:1 fails to start once the marker file is there; the others never do.
    script = ("import os, sys, time\n"
              "if sys.argv[1] == '1' and os.path.exists('fail-1'): sys.exit(3)\n"
              "time.sleep(600)\n")
    superd.start({"web": {"command": [PY, "-c", script, "${SUPERD_INSTANCE}"], "numprocs": 3,
                          "startsecs": "300ms", "startretries": 1,
                          "backoff": {"initial": "50ms", "max": "100ms"}}})
    wait_for(lambda: all_running(superd), what="web:0..2 RUNNING")
    before = pids(superd)
    (superd.folder / "fail-1").touch()
    done = superd.ctl("restart", "--rolling", "web")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ("web:0: restarted\n"
                           "web:1: FATAL (exit 3)\n"
                           "web:2: RUNNING (not restarted: web:1 failed)\n")
    after = {row["name"]: row for row in superd.status("web")}
    assert after["web:0"]["pid"] != before["web:0"] and after["web:0"]["state"] == "RUNNING"
    assert after["web:1"]["state"] == "FATAL"
    assert after["web:2"]["pid"] == before["web:2"]  # untouched
    assert "rolling restart stopped at web:1 (exit 3); not restarted: web:2" in \
        (superd.folder / "log" / "superd.log").read_text()


def slow_sleepers(startsecs: str = "1s") -> dict[str, object]:
    # Each instance takes startsecs to be RUNNING: a roll of three, three times that.
    return {"command": ["sleep", "600"], "numprocs": 3, "startsecs": startsecs}


def begin_roll(superd: Superd) -> Client:
    client = superd.client()
    client.send("restart", {"names": ["web"], "rolling": True})
    wait_for(lambda: superd.status("web:0")["state"] == "STARTING", what="the roll to begin")
    return client


def roll_reply(client: Client) -> list[dict[str, Any]]:
    message = client.receive()
    client.close()
    assert message is not None and message[1]["ok"], message
    return message[1]["result"]  # type: ignore[no-any-return]


def test_a_second_restart_is_refused_and_a_stop_ends_the_roll(superd: Superd) -> None:
    superd.start({"web": slow_sleepers()})
    wait_for(lambda: all_running(superd), what="web:0..2 RUNNING")
    before = pids(superd)
    client = begin_roll(superd)
    for argv in (["restart", "--rolling", "web:2"], ["restart", "web"]):
        busy = superd.ctl(*argv)
        assert busy.returncode == 1
        assert "a rolling restart of web" in busy.stderr and "is under way" in busy.stderr
    stopped = superd.ctl("stop", "web:2")
    assert stopped.returncode == 0, stopped.stderr
    rows = roll_reply(client)
    assert [(row["name"], row["ok"], row["error"]) for row in rows] == [
        ("web:0", False, "rolling restart ended: web:2 was stopped"),
        ("web:1", False, "not restarted: rolling restart ended (web:2 was stopped)"),
        ("web:2", False, "not restarted: rolling restart ended (web:2 was stopped)"),
    ]
    # web:0 finishes the restart it was in; web:1 is left alone.
    row = superd.wait_state("web:0", "RUNNING")
    assert row["pid"] != before["web:0"]
    assert superd.status("web:1")["pid"] == before["web:1"]
    assert superd.status("web:2")["state"] == "STOPPED"
    # The roll is over: the instances may be restarted again.
    again = superd.ctl("restart", "--rolling", "web:1")
    assert again.returncode == 0, again.stderr


def test_a_shutdown_ends_the_roll(superd: Superd) -> None:
    superd.start({"web": slow_sleepers()})
    wait_for(lambda: all_running(superd), what="web:0..2 RUNNING")
    client = begin_roll(superd)
    assert superd.ctl("shutdown").returncode == 0
    rows = roll_reply(client)
    assert [row["error"] for row in rows] == [
        "rolling restart ended: superd is shutting down",
        "not restarted: rolling restart ended (superd is shutting down)",
        "not restarted: rolling restart ended (superd is shutting down)",
    ]


def test_a_reexec_drops_the_roll_and_leaves_the_instances_as_they_are(superd: Superd) -> None:
    superd.start({"web": slow_sleepers("4s")})  # web:0's turn outlasts the re-exec
    wait_for(lambda: all_running(superd), what="web:0..2 RUNNING")
    before = pids(superd)
    client = begin_roll(superd)
    assert superd.ctl("reexec").returncode == 0
    assert client.receive() is None  # closed with the others, without the reply
    client.close()
    row = superd.wait_state("web:0", "RUNNING")  # it finishes the restart it was in
    assert row["pid"] != before["web:0"]
    assert {name: pids(superd)[name] for name in ("web:1", "web:2")} == \
        {name: before[name] for name in ("web:1", "web:2")}
    # Nothing holds them any more: a new roll is taken.
    again = superd.ctl("restart", "--rolling", "web:2")
    assert again.returncode == 0, again.stderr


def test_a_roll_waits_for_each_instance_to_be_healthy(superd: Superd) -> None:
    # Each process is RUNNING at once but healthy only once it has made its
    # marker, a second after it started (and it removes the old one first).
    command = ("rm -f healthy-$SUPERD_INSTANCE; sleep 1; touch healthy-$SUPERD_INSTANCE; "
               "exec sleep 600")
    superd.start({"web": {"command": ["sh", "-c", command], "numprocs": 2, "startsecs": 0,
                          "healthcheck": {"exec": ["sh", "-c", "test -e healthy-$SUPERD_INSTANCE"],
                                          "interval": "200ms", "timeout": "1s",
                                          "retries": 50}}})
    wait_for(lambda: all(row["health"] == "healthy" for row in superd.status("web")),
             what="web:0 and web:1 healthy")
    events = Client(superd.socket)
    assert events.result("subscribe") == {}
    done = superd.ctl("restart", "--rolling", "web")
    assert done.returncode == 0, done.stdout + done.stderr
    seen = []
    # The reply came once web:1 was healthy: every event up to it has been sent.
    while ("health", "web:1", "healthy") not in seen:
        message = events.receive()
        assert message is not None, "the daemon closed the event stream"
        kind, event = message
        if kind == Kind.EVENT and event["event"] in ("state", "health"):
            seen.append((event["event"], event["name"], event["to"]))
    events.close()
    # web:1 is stopped only once web:0 is healthy again, not when it is RUNNING.
    assert seen.index(("health", "web:0", "healthy")) < seen.index(("state", "web:1", "STOPPING"))
    assert seen.index(("state", "web:0", "RUNNING")) < seen.index(("health", "web:0", "healthy"))
