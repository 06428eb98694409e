"""GET /metrics over real TCP from a real daemon: the answers, the limits,
slow clients, reload and re-exec."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from superd.metricsserver import HEAD_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD
from support import DEADLINE, Superd, TryLoop, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sleeper(**keys: Any) -> dict[str, Any]:
    return {"command": ["sleep", "600"], "startsecs": 0, **keys}


def start(superd: Superd, port: int, **workers: dict[str, Any]) -> None:
    superd.start(workers or {"web": sleeper(numprocs=2)},
                 daemon={"metrics": f"tcp://127.0.0.1:{port}"})


def request(port: int, method: str = "GET", path: str = "/metrics") \
        -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send data, then read until the daemon closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(data)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def instance_names(text: str) -> set[str]:
    [up] = [family for family in text_string_to_metric_families(text)
            if family.name == "superd_instance_up"]
    return {sample.labels["name"] for sample in up.samples}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
    except ConnectionRefusedError:
        return True
    return False


def test_get_metrics_and_the_other_answers(superd: Superd) -> None:
    port = free_port()
    start(superd, port)
    superd.wait_state("web:1", "RUNNING")
    status, headers, body = request(port)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert instance_names(body.decode()) == {"web:0", "web:1"}
    assert instance_names(request(port, path="/metrics?name=web&x")[2].decode()) == \
        {"web:0", "web:1"}
    status, headers, body = request(port, "HEAD")
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
    assert request(port, path="/")[0] == 404
    assert request(port, path="/metrics/x")[0] == 404
    status, headers, _ = request(port, "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert status_line(exchange(port, b"HELLO\r\n\r\n")) == b"HTTP/1.1 400 Bad Request"
    assert status_line(exchange(port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 3
                                + b"\r\n\r\n")) == b"HTTP/1.1 400 Bad Request"
    # A head over the bound is answered, not left to reset the connection.
    oversized = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEAD * 4) + b"\r\n\r\n"
    assert status_line(exchange(port, oversized)) == \
        b"HTTP/1.1 431 Request Header Fields Too Large"
    assert request(port)[0] == 200  # and the daemon goes on


def test_connections_beyond_the_limit_are_closed_at_once(superd: Superd) -> None:
    port = free_port()
    start(superd, port)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            for _ in range(MAX_CONNECTIONS)]
    try:
        began = time.monotonic()
        # Accepted after the others (the listen queue keeps its order): one too many.
        try:
            answer = exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        except ConnectionResetError:
            answer = b""  # closed before its request came, which a close then resets
        assert answer == b"" or status_line(answer) == b"HTTP/1.1 503 Service Unavailable"
        assert time.monotonic() - began < HEAD_TIMEOUT  # at once, not at a deadline
        # Each of the others was let in and is answered.
        idle[0].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status_line(read_to_end(idle[0])) == b"HTTP/1.1 200 OK"
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: request(port)[0] == 200, what="a connection once the others are gone")


def test_a_slow_client_is_closed_and_holds_nobody_up(superd: Superd) -> None:
    port = free_port()
    start(superd, port)
    slow = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    trickled = threading.Event()

    def trickle() -> None:
        """A slowloris: one byte of a head that never ends, every 0.2 s."""
        try:
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")
            while not trickled.wait(0.2):
                slow.sendall(b"X")
        except OSError:
            pass  # closed by the daemon

    began = time.monotonic()
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        while time.monotonic() - began < 1.0:  # meanwhile, everybody else is served
            done = superd.ctl("status")
            assert done.returncode == 0, done.stderr
            assert request(port)[0] == 200
        answer = read_to_end(slow)
        closed_after = time.monotonic() - began
    finally:
        trickled.set()
        thread.join(DEADLINE)
        slow.close()
    assert status_line(answer) == b"HTTP/1.1 408 Request Timeout"
    assert HEAD_TIMEOUT - 0.5 < closed_after < HEAD_TIMEOUT + 10


def test_reload_moves_the_responder_or_refuses(superd: Superd) -> None:
    first, second = free_port(), free_port()
    start(superd, first)
    config = superd.config_path.read_text()

    def reload_with(address: str) -> tuple[int, str]:
        superd.config_path.write_text(config.replace(f"tcp://127.0.0.1:{first}", address))
        done = superd.ctl("reload")
        return done.returncode, done.stdout + done.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        code, said = reload_with(f"tcp://127.0.0.1:{busy}")
        assert code == 1
        assert f"cannot serve metrics on tcp://127.0.0.1:{busy}: Address already in use" in said
    assert request(first)[0] == 200  # refused: nothing changed

    assert reload_with(f"tcp://127.0.0.1:{second}") == (0, "daemon: daemon.metrics\n")
    assert request(second)[0] == 200
    assert refused(first)
    assert reload_with("null")[0] == 0
    assert refused(second)


def listening_inode(port: int) -> str | None:
    """The inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return fields[9]
    return None


def test_a_reexec_keeps_the_listening_socket(superd: Superd) -> None:
    port = free_port()
    start(superd, port)
    inode = listening_inode(port)
    assert inode is not None
    scrapes = TryLoop(lambda: request(port)[0] == 200)
    scrapes.start()
    try:
        for count in range(1, 4):
            wait_for(lambda wanted=3 * count: scrapes.answered >= wanted,
                     what="scrapes between re-execs")
            done = superd.ctl("reexec")
            assert done.returncode == 0, done.stderr
            assert f"re-execs {count}" in done.stdout
    finally:
        scrapes.finish()
    assert scrapes.refused == 0
    assert listening_inode(port) == inode  # handed over, not bound again
    status, _, body = request(port)
    assert status == 200 and instance_names(body.decode()) == {"web:0", "web:1"}


@contextmanager
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_a_taken_address_stops_the_start(superd: Superd) -> None:
    with taken_port() as port:
        superd.write_config({"web": sleeper()}, daemon={"metrics": f"tcp://127.0.0.1:{port}"})
        done = superd.run("-c", str(superd.config_path))
    assert done.returncode == 1
    assert done.stderr == (f"superd: cannot serve metrics on tcp://127.0.0.1:{port}: "
                           "Address already in use\n")
    assert superd.pid is None and not Path(superd.socket).exists()


# An image from before metrics: its state has no "metrics" (and so its
# metrics socket, which none of its kind had, is closed at the exec).
OLD_STATE = '''
from superd import daemon

_handover = daemon.Daemon.handover


def handover(self):
    state = _handover(self)
    del state["metrics"]
    return state


daemon.Daemon.handover = handover
'''


def test_a_state_without_the_metrics_socket_resumes_and_binds(superd: Superd,
                                                              tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OLD_STATE)
    superd.env["PYTHONPATH"] = str(site)
    port = free_port()
    start(superd, port)
    before = listening_inode(port)
    pids = {row["name"]: row["pid"] for row in superd.status()}
    done = superd.ctl("reexec")
    assert done.returncode == 0, done.stderr
    assert superd.call("ping")["reexecs"] == 1
    assert {row["name"]: row["pid"] for row in superd.status()} == pids
    status, _, body = wait_for(lambda: (answer := request(port))[0] == 200 and answer,
                               what="the new image to serve metrics")
    assert instance_names(body.decode()) == {"web:0", "web:1"}
    assert listening_inode(port) not in (None, before)  # bound by the new image
