"""Healthchecks through real daemons: an HTTP server that stops answering, a
TCP server that stops listening, exec probes that overrun, and the loop's
wake-ups with and without probes."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import Client, Superd, pids_tagged, wait_for, zombie_children

# Serves on 127.0.0.1:PORT: 200, or 500 while a file `sick` exists, or no
# answer at all while `hang` exists; stops listening while `deaf` exists.
SERVER = """
import http.server, os, socket, sys, threading, time
port = int(sys.argv[1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists("hang"):
            time.sleep(600)
        self.send_response(500 if os.path.exists("sick") else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
def go_deaf():
    while not os.path.exists("deaf"):
        time.sleep(0.05)
    server.socket.close()
threading.Thread(target=go_deaf, daemon=True).start()
try:
    server.serve_forever()
except OSError:
    time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server(folder: Path, port: str, **keys: Any) -> dict[str, Any]:
    (folder / "server.py").write_text(SERVER)
    return {"command": [sys.executable, str(folder / "server.py"), port],
            # A port per instance (${...}) cannot be a ready: probe: startsecs then.
            "ready": {"tcp": int(port)} if port.isdigit() else "none",
            "startsecs": 0 if port.isdigit() else 1,
            **keys}


def start_subscribed(superd: Superd, workers: dict[str, Any]) -> Client:
    """Start the daemon with these workers, subscribe, then start them: no
    event of theirs is missed."""
    superd.start({name: {**keys, "autostart": False} for name, keys in workers.items()})
    events = superd.client()
    events.result("subscribe")
    started = superd.ctl("start", "all")
    assert started.returncode == 0, started.stderr
    return events


def subscribe(superd: Superd) -> Client:
    events = superd.client()
    events.result("subscribe")
    return events


def next_state(events: Client, name: str, to: str) -> dict[str, Any]:
    while (event := events.next_event("state"))["name"] != name or event["to"] != to:
        pass
    return event


def port_pair() -> str:
    """A prefix P such that ports P0 and P1 are free: ${P}${SUPERD_INSTANCE}."""
    for base in range(2000 + int(time.time()) % 3000, 6553):
        try:
            for index in (0, 1):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base * 10 + index))
        except OSError:
            continue
        return str(base)
    raise AssertionError("no two free ports")


def next_health(events: Client, name: str, to: str | None = None) -> dict[str, Any]:
    """The next health event of instance `name` (going `to` that, if given)."""
    while True:
        event = events.next_event("health")
        if event["name"] == name and to in (None, event["to"]):
            return event


def test_an_http_server_that_stops_answering_is_restarted(superd: Superd) -> None:
    port = str(free_port())
    events = start_subscribed(superd, {"web": server(superd.folder, port, healthcheck={
        "http": f"http://127.0.0.1:{port}/ping?x=1", "interval": "300ms", "timeout": "500ms",
        "retries": 2}), "mark": {"command": ["sleep", "600"], "startsecs": 0}})
    assert superd.ctl("stop", "mark").returncode == 0
    first = superd.wait_state("web", "RUNNING")
    assert first["health"] in ("starting", "healthy")
    healthy = next_health(events, "web")
    assert healthy["from"] == "starting" and healthy["to"] == "healthy", healthy
    assert healthy["message"] == "HTTP 200" and healthy["pid"] == first["pid"]
    table = superd.ctl("status", "web")
    assert table.stdout.split("\n")[0].split()[-1] == "HEALTH", table.stdout
    assert table.stdout.split("\n")[1].split()[-1] == "healthy", table.stdout

    (superd.folder / "hang").touch()
    unhealthy = next_health(events, "web")
    assert (unhealthy["from"], unhealthy["to"]) == ("healthy", "unhealthy"), unhealthy
    assert unhealthy["message"] == "no answer within 0.5s"
    (superd.folder / "hang").unlink()
    assert next_state(events, "web", "STOPPING")["from"] == "RUNNING"
    again = next_health(events, "web")
    assert (again["from"], again["to"]) == ("unhealthy", "starting")
    assert next_health(events, "web")["to"] == "healthy"
    row = superd.status("web")
    assert row["pid"] != first["pid"] and row["restarts"] == 1 and row["health"] == "healthy"

    # A 5xx is a failure too (as `superctl events` shows); a server that
    # recovers is healthy again.
    watcher = subprocess.Popen([sys.executable, "-m", "superd.cli", "-s", superd.socket,
                                "events"], stdout=subprocess.PIPE, text=True, env=superd.env)
    try:
        assert watcher.stdout is not None
        # Once it shows a start, it is subscribed.
        assert superd.ctl("start", "mark").returncode == 0
        assert any(" mark STARTING -> RUNNING " in line for line in watcher.stdout)
        (superd.folder / "sick").touch()
        sick = next_health(events, "web")
        assert (sick["to"], sick["message"]) == ("unhealthy", "HTTP 500")
        line = next(line for line in watcher.stdout if " health " in line)
        assert line.split(" ", 1)[1].strip() == \
            f"web health healthy -> unhealthy pid {sick['pid']} (HTTP 500)", line
    finally:
        watcher.terminate()
        watcher.wait()
    (superd.folder / "sick").unlink()
    assert next_health(events, "web")["to"] == "starting"
    assert next_health(events, "web")["to"] == "healthy"
    assert superd.status("web")["restarts"] == 2
    events.close()


def test_each_instance_probes_its_own_port(superd: Superd) -> None:
    prefix = port_pair()
    for index in (0, 1):
        (superd.folder / f"w{index}").mkdir()
    events = start_subscribed(superd, {"api": server(
        superd.folder, "${PORT}", numprocs=2, directory="w${SUPERD_INSTANCE}",
        environment={"PORT": prefix + "${SUPERD_INSTANCE}"},
        healthcheck={"tcp": "${PORT}", "interval": "200ms", "retries": 1})})
    wait_for(lambda: all(row["health"] == "healthy" for row in superd.status("api")),
             what="both instances healthy")
    before = {row["name"]: row["pid"] for row in superd.status("api")}
    (superd.folder / "w1" / "deaf").touch()
    sick = next_health(events, "api:1", "unhealthy")
    # Refused, or reset when the probe was queued as the socket closed.
    assert sick["message"] in ("connection refused", "connection reset by peer"), sick
    (superd.folder / "w1" / "deaf").unlink()
    wait_for(lambda: superd.status("api:1")["health"] == "healthy", what="api:1 healthy")
    after = {row["name"]: (row["pid"], row["restarts"]) for row in superd.status("api")}
    assert after["api:0"] == (before["api:0"], 0)
    assert after["api:1"][0] != before["api:1"] and after["api:1"][1] == 1
    events.close()


def test_an_exec_probe_runs_like_the_worker_and_is_killed_when_it_overruns(
        superd: Superd) -> None:
    work = superd.folder / "work"
    work.mkdir()
    probe = ('echo "$(pwd) $SUPERD_NAME $COLOUR" >> probes.txt; '
             'if [ -e slow ]; then exec sleep 600; fi; [ ! -e fail ] || { echo broken; exit 3; }')
    events = start_subscribed(superd, {"job": {
        "command": ["sleep", "600"], "startsecs": 0, "directory": str(work),
        "environment": {"COLOUR": "teal"},
        "healthcheck": {"exec": ["sh", "-c", probe], "interval": "200ms", "timeout": "400ms",
                        "retries": 2}}})
    assert next_health(events, "job")["to"] == "healthy"
    assert (work / "probes.txt").read_text().split("\n")[0] == f"{work} job teal"

    (work / "fail").touch()
    failed = next_health(events, "job")
    assert (failed["to"], failed["message"]) == ("unhealthy", "exited 3: broken"), failed
    (work / "fail").unlink()
    assert next_health(events, "job")["to"] == "starting"
    assert next_health(events, "job")["to"] == "healthy"

    (work / "slow").touch()
    overran = next_health(events, "job")
    assert (overran["to"], overran["message"]) == ("unhealthy", "no answer within 0.4s")
    (work / "slow").unlink()
    assert next_health(events, "job")["to"] == "starting"
    # Every overrunning probe was killed and reaped: no sleep 600 but the worker's.
    worker = superd.status("job")["pid"]
    wait_for(lambda: set(pids_tagged(superd.tag)) - {superd.pid, superd.keeper} == {worker},
             what="the killed probes to be gone")
    assert zombie_children(superd.pid or 0) == []
    assert superd.status("job")["restarts"] == 2
    events.close()


def test_health_goes_on_across_a_reexec(superd: Superd) -> None:
    port = str(free_port())
    superd.start({"web": server(superd.folder, port, healthcheck={
        "tcp": int(port), "interval": "200ms", "retries": 2})})
    wait_for(lambda: superd.status("web")["health"] == "healthy", what="web healthy")
    pid = superd.status("web")["pid"]
    assert superd.ctl("reexec").returncode == 0
    assert superd.status("web")["health"] == "healthy"
    events = subscribe(superd)
    (superd.folder / "deaf").touch()
    assert next_health(events, "web")["to"] == "unhealthy"
    (superd.folder / "deaf").unlink()
    wait_for(lambda: superd.status("web")["health"] == "healthy", what="web healthy again")
    assert superd.status("web")["pid"] != pid
    events.close()


def context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.split(":")[0].endswith("ctxt_switches"):
                total += int(line.split()[1])
    return total


def wake_ups(pid: int, seconds: float) -> int:
    before = context_switches(pid)
    time.sleep(seconds)  # the measurement itself: how often does an idle daemon wake?
    return context_switches(pid) - before


def test_probes_are_the_only_wake_ups(superd: Superd) -> None:
    port = str(free_port())
    worker = server(superd.folder, port)
    superd.start({"web": {**worker, "healthcheck": {"tcp": int(port), "interval": "500ms"}}})
    wait_for(lambda: superd.status("web")["health"] == "healthy", what="web healthy")
    daemon = superd.pid or 0
    probing = wake_ups(daemon, 3.0)
    print(f"wake-ups in 3 s with a tcp probe every 500ms: {probing}")
    # Six probes in 3 s, each a timer, a connect and its completion: a few
    # wake-ups each, and nothing in between.
    assert 4 <= probing <= 6 * 6, probing

    superd.write_config({"web": worker})
    assert superd.ctl("reload").returncode == 0
    superd.wait_state("web", "RUNNING")
    assert superd.status("web")["health"] is None
    time.sleep(1.5)  # the reload's own aftermath (log flush) is over
    assert wake_ups(daemon, 3.0) == 0


def test_a_probe_superd_cannot_make_is_not_counted(superd: Superd) -> None:
    port = str(free_port())
    superd.start({"web": server(superd.folder, port, healthcheck={
        "tcp": int(port), "interval": "100ms", "retries": 1})})
    wait_for(lambda: superd.status("web")["health"] == "healthy", what="web healthy")
    daemon = superd.pid or 0
    client = superd.client()  # connected now: later a connection would need an fd
    pid = client.result("status", {"names": ["web"]})[0]["pid"]
    used = {int(fd) for fd in os.listdir(f"/proc/{daemon}/fd")}
    saved = resource.prlimit(daemon, resource.RLIMIT_NOFILE)
    # No fd free below the soft limit: every probe's socket() fails, EMFILE.
    resource.prlimit(daemon, resource.RLIMIT_NOFILE,
                     (next(n for n in range(len(used) + 1) if n not in used), saved[1]))
    log = superd.folder / "log" / "superd.log"
    try:
        wait_for(lambda: "healthcheck not run: cannot probe: Too many open files"
                 in log.read_text(), what="a probe superd could not make")
        began = time.monotonic()
        while time.monotonic() - began < 1.0:  # ten probes that cannot be made
            row = client.result("status", {"names": ["web"]})[0]
            assert (row["pid"], row["health"]) == (pid, "healthy"), row
            time.sleep(0.05)
    finally:
        resource.prlimit(daemon, resource.RLIMIT_NOFILE, saved)
    (superd.folder / "deaf").touch()  # and probes that can be made count again
    wait_for(lambda: client.result("status", {"names": ["web"]})[0]["pid"] != pid,
             what="web restarted once it fails a real probe")
    (superd.folder / "deaf").unlink()
    client.close()
    skipped = [line for line in log.read_text().splitlines() if "healthcheck not run" in line]
    assert 1 <= len(skipped) <= 4, skipped  # about a line a second, not one per probe
