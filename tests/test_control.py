"""The control socket under abuse, end to end: big configs, clients that do
not read, clients that keep connecting, a daemon out of file descriptors."""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import time
from pathlib import Path
from typing import Any

from superd.protocol import MAX_REPLY, Decoder, Kind, encode
from support import Client, Superd, wait_for

SLEEPER = ["sleep", "600"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def worker(command: list[str], **keys: object) -> dict[str, object]:
    return {"command": command, "startsecs": "200ms", **keys}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def refusal(client: Client) -> dict[str, Any] | None:
    """The one reply a refused connection gets, or None when it is served."""
    try:
        request_id = client.send("ping")
    except (BrokenPipeError, ConnectionResetError):
        request_id = None  # refused already; its one reply is still there to read
    message = client.receive()
    assert message is not None, "closed without a reply"
    reply = message[1]
    if reply["id"] == request_id and reply["ok"]:
        return None
    return reply


def is_closed(client: Client) -> bool:
    try:
        return client.receive() is None
    except ConnectionResetError:  # what is left unread at a close resets the peer
        return True


# -- big replies ----------------------------------------------------------------

def test_status_of_ten_thousand_instances(superd: Superd) -> None:
    superd.start({"steady": worker(SLEEPER),
                  "many": worker(SLEEPER, numprocs=10000, autostart=False)})
    steady_pid = superd.wait_state("steady", "RUNNING")["pid"]
    client = superd.client()
    times = []
    for _ in range(5):
        began = time.monotonic()
        rows = client.result("status")
        times.append(time.monotonic() - began)
    client.close()
    assert len(rows) == 10001 and rows[-1]["name"] == "many:9999"
    assert {row["state"] for row in rows[1:]} == {"STOPPED"}
    began = time.monotonic()
    listed = superd.ctl("--json", "status")
    ctl_time = time.monotonic() - began
    assert listed.returncode == 3, listed.stderr  # not all RUNNING
    assert len(json.loads(listed.stdout)) == 10001
    table = superd.ctl("status")
    assert table.returncode == 3 and len(table.stdout.splitlines()) == 10002
    assert superd.status("steady")["pid"] == steady_pid
    began = time.monotonic()
    stopped = superd.call("stop", {"names": ["all"]})
    stop_time = time.monotonic() - began
    assert len(stopped) == 10001 and all(row["ok"] for row in stopped)
    print(f"status of 10001 instances: wire median {median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms; superctl --json status {ctl_time * 1000:.0f} ms; "
          f"stop all {stop_time * 1000:.0f} ms")
    assert median(times) < 2.0
    assert stop_time < 1.5  # the loop is busy all along: this is the longest it is deaf


# -- out of file descriptors ------------------------------------------------------

def test_accept_out_of_descriptors_neither_spins_nor_floods_the_log(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    superd.wait_state("a", "RUNNING")
    pid = superd.pid
    assert pid is not None
    daemon_log = superd.folder / "log" / "superd.log"
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    held: list[Client] = []
    try:
        spare = len(os.listdir(f"/proc/{pid}/fd")) + 3
        # Soft and hard: nothing the daemon does can lift it again.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (spare, spare))
        refused = None
        while refused is None and len(held) < 20:
            held.append(Client(superd.socket, timeout=3.0))
            try:
                refused = refusal(held[-1])
            except TimeoutError:
                break  # neither served nor refused: stuck in the backlog
        assert refused is not None, "the client over the limit got no answer"
        assert refused["id"] is None and refused["error"]["code"] == "too_many_connections"
        assert is_closed(held.pop())
        late = Client(superd.socket, timeout=3.0)  # one more, while still out of fds
        held.append(late)
        cpu_before = cpu_seconds(pid)
        time.sleep(2.0)  # an observation window: nothing to wait for
        cpu_used = cpu_seconds(pid) - cpu_before
        message = late.receive()
        assert message is not None and message[1]["error"]["code"] == "too_many_connections"
        print(f"out of fds: {len(held) - 1} clients served, daemon CPU {cpu_used:.3f} s "
              f"over 2 s")
        assert cpu_used < 0.3
        for client in held:
            client.close()
        # Served again once descriptors are free, under the same limit.
        assert superd.call("ping")["pid"] == pid
    finally:
        for client in held:
            client.close()
        restore_limit(pid, before)
    lines = [line for line in daemon_log.read_text().splitlines() if "accept" in line]
    assert 1 <= len(lines) <= 3, lines


def restore_limit(pid: int, limits: tuple[int, int]) -> None:
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    except PermissionError:
        pass  # without CAP_SYS_RESOURCE a lowered hard limit cannot be raised again


# -- bounded clients ----------------------------------------------------------------

def send_for_a_while(sock: socket.socket, data: bytes, patience: float = 0.5) -> int:
    """Send until everything is sent or the socket stays full for `patience` s."""
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            if not select.select([], [sock], [], patience)[1]:
                break
    return sent


def test_a_client_that_does_not_read_costs_others_nothing(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER, numprocs=20)})
    wait_for(lambda: all(row["state"] == "RUNNING" for row in superd.status()),
             what="all RUNNING")
    pid = superd.pid
    assert pid is not None
    pinger = superd.client()
    pinger.result("status")  # warm: the first sample reads every /proc entry
    rss_before = rss_bytes(pid)
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(superd.socket)
    hog.setblocking(False)
    frames = b"".join(encode(Kind.REQUEST, {"id": n, "cmd": "status", "args": {}})
                      for n in range(1, 5001))
    sent = send_for_a_while(hog, frames)
    times = []
    for _ in range(50):
        began = time.monotonic()
        pinger.result("ping")
        times.append(time.monotonic() - began)
    rss_growth = rss_bytes(pid) - rss_before
    print(f"ping beside a 5000-status pipeline: median {median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms; {sent} of {len(frames)} bytes taken; "
          f"daemon RSS +{rss_growth / 1024:.0f} KiB")
    assert median(times) < 0.05 and max(times) < 1.0
    assert rss_growth < 16 << 20
    # Reading lets it go on, in order (all 5000 would take a status's work each).
    began = time.monotonic()
    assert read_replies(hog, frames, sent, 300) == list(range(1, 301))
    print(f"the next 300 statuses once read: {time.monotonic() - began:.2f} s")
    hog.close()  # with thousands unanswered: that costs only the hog
    assert pinger.result("ping")["pid"] == pid
    pinger.close()


def read_replies(sock: socket.socket, frames: bytes, sent: int, count: int) -> list[int]:
    """The ids of the first `count` replies, sending the rest of `frames` as it goes."""
    decoder = Decoder(MAX_REPLY)
    ids: list[int] = []
    deadline = time.monotonic() + 60
    while len(ids) < count:
        assert time.monotonic() < deadline, f"only {len(ids)} replies"
        want_write = [sock] if sent < len(frames) else []
        readable, writable, _ = select.select([sock], want_write, [], 1.0)
        if writable:
            try:
                sent += sock.send(frames[sent:sent + 65536])
            except BlockingIOError:
                pass
        if readable:
            data = sock.recv(1 << 20)
            assert data, f"disconnected after {len(ids)} replies"
            ids.extend(message["id"] for _, message in decoder.feed(data))
    return ids[:count]


def test_max_connections(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)}, daemon={"max_connections": 3})
    clients = [superd.client() for _ in range(3)]
    for client in clients:
        assert refusal(client) is None
    extra = superd.client()
    reply = refusal(extra)
    assert reply is not None and reply["id"] is None
    assert reply["error"]["code"] == "too_many_connections"
    assert "3" in reply["error"]["message"]
    assert is_closed(extra)
    extra.close()
    refused = superd.ctl("ping")
    assert refused.returncode == 4 and "at most 3" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    clients.pop().close()
    wait_for(lambda: superd.ctl("ping").returncode == 0, what="a free connection")
    for client in clients:
        assert refusal(client) is None
        client.close()


def test_a_half_frame_waits_for_the_rest(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    slow = superd.client()
    frame = encode(Kind.REQUEST, {"id": 7, "cmd": "ping", "args": {}})
    slow.send_raw(frame[:10])
    assert superd.call("ping")["pid"] == superd.pid  # others are served meanwhile
    time.sleep(1.0)  # well inside the 30 s allowed for the rest of a frame
    slow.send_raw(frame[10:])
    message = slow.receive()
    assert message is not None and message[1]["id"] == 7 and message[1]["ok"]
    slow.close()


def test_max_connections_applies_on_reload(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)}, daemon={"max_connections": 2})
    clients = [superd.client(), superd.client()]
    assert all(refusal(client) is None for client in clients)
    superd.write_config({"a": worker(SLEEPER)}, daemon={"max_connections": 4})
    result = clients[0].result("reload")
    assert result["daemon"] == ["daemon.max_connections"]
    clients += [superd.client(), superd.client()]
    assert all(refusal(client) is None for client in clients)
    fifth = superd.client()
    reply = refusal(fifth)
    assert reply is not None and "at most 4" in reply["error"]["message"]
    for client in [*clients, fifth]:
        client.close()
