"""Helpers for tests that run a real daemon: deadlines, /proc, the client."""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from superd.loop import Loop
from superd.protocol import MAX_REPLY, Decoder, Kind, encode

REPO = Path(__file__).resolve().parents[1]
PR_SET_CHILD_SUBREAPER = 36
DEADLINE = 20.0  # generous: a loaded 2-core machine is slow, never sleepy


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE,
             what: str = "condition") -> Any:
    """Poll predicate until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)



def run_loop_until(loop: Loop, predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Run an in-process Loop until predicate holds; fail at the deadline."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if predicate() or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.002, check)

    loop.call_later(0, check)
    loop.run()
    assert predicate(), "condition not reached in the loop"

@contextmanager
def small_disk(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted at folder for the block (the test skips if it cannot)."""
    import pytest

    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def request_frame(request_id: int, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return encode(Kind.REQUEST, {"id": request_id, "cmd": cmd, "args": args or {}})


def reap_adopted() -> None:
    """Reap zombies re-parented to us (we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of a process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def pids_tagged(tag: str) -> list[int]:
    """Every live process whose environment carries our test tag."""
    marker = f"SUPERD_TEST_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0") and alive(int(entry)):
            found.append(int(entry))
    return found


def zombie_children(ppid: int) -> list[int]:
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[0] == "Z" and stat[1] == ppid:
                zombies.append(int(entry))
    return zombies


class Client:
    """A minimal blocking wire client for tests (independent of superd.client)."""

    def __init__(self, path: str, timeout: float = DEADLINE) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.decoder = Decoder(MAX_REPLY)
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.next_id = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, cmd: str, args: dict[str, Any] | None = None) -> int:
        request_id = self.next_id
        self.next_id += 1
        self.sock.sendall(request_frame(request_id, cmd, args))
        return request_id

    def receive(self) -> tuple[int, dict[str, Any]] | None:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def next_event(self, kind: str) -> dict[str, Any]:
        """The next pushed event of this kind (the socket timeout bounds the wait)."""
        while True:
            message = self.receive()
            assert message is not None, "daemon closed the event stream"
            if message[0] == Kind.EVENT and message[1]["event"] == kind:
                return message[1]

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = self.send(cmd, args)
        message = self.receive()
        assert message is not None, "daemon closed the connection"
        assert message[1]["id"] == request_id
        return message[1]

    def result(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        reply = self.call(cmd, args)
        assert reply["ok"], reply
        return reply["result"]

    def close(self) -> None:
        self.sock.close()


class Superd:
    """One real daemon in a temporary folder, started like a user would."""

    def __init__(self, folder: Path, tag: str) -> None:
        self.folder = folder
        self.tag = tag
        self.config_path = folder / "superd.yaml"
        self.socket = str(folder / "run" / "superd.sock")
        self.pidfile = folder / "run" / "superd.pid"
        self.env = dict(os.environ, SUPERD_TEST_TAG=tag,
                        NO_COLOR="1")
        self.env.pop("SUPERD_SOCKET", None)
        self.env.pop("SUPERD_CONFIG", None)
        self.env.pop("NOTIFY_SOCKET", None)
        # Set by systemd, they would move the default socket and logs (config.py).
        self.env.pop("RUNTIME_DIRECTORY", None)
        self.env.pop("LOGS_DIRECTORY", None)

    def write_config(self, workers: dict[str, Any], daemon: dict[str, Any] | None = None,
                     **top: Any) -> Path:
        document: dict[str, Any] = {"daemon": {"shutdown_timeout": "10s", **(daemon or {})},
                                    "workers": workers, **top}
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.config_path

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `superd ARGS` (the launcher) to completion."""
        return subprocess.run([sys.executable, "-m", "superd", *args], env=self.env,
                              capture_output=True, text=True, timeout=DEADLINE, check=check,
                              stdin=subprocess.DEVNULL, cwd=self.folder)

    def start(self, workers: dict[str, Any] | None = None, **config: Any) -> None:
        if workers is not None:
            self.write_config(workers, **config)
        result = self.run("-c", str(self.config_path))
        assert result.returncode == 0, result.stderr
        assert self.pid, "no pidfile after start"

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "superd.cli", "-s", self.socket,
                               *args], env=self.env, capture_output=True, text=True,
                              timeout=DEADLINE, stdin=subprocess.DEVNULL)

    def client(self) -> Client:
        return Client(self.socket)

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        client = self.client()
        try:
            return client.result(cmd, args)
        finally:
            client.close()

    def status(self, name: str | None = None) -> Any:
        rows = self.call("status", {"names": [name] if name else []})
        return rows[0] if name and len(rows) == 1 else rows

    def wait_state(self, name: str, state: str, timeout: float = DEADLINE) -> dict[str, Any]:
        return wait_for(lambda: (row := self.status(name))["state"] == state and row,
                        timeout, f"{name} to be {state}")  # type: ignore[no-any-return]

    def log_file(self, instance: str, stream: str = "out") -> Path:
        return self.folder / "log" / f"{instance.replace(':', '_')}.{stream}.log"

    @property
    def keeper(self) -> int | None:
        """The keeper process above the daemon (keeper.py), if it has one."""
        stat = proc_stat(self.pid or 0)
        if stat is None:
            return None
        try:
            argv = Path(f"/proc/{stat[1]}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return stat[1] if any(arg.endswith(b"keeper.py") for arg in argv) else None

    def stop(self) -> None:
        """SIGTERM the daemon and wait for it (and its keeper) to be gone,
        SIGKILL at the deadline."""
        pid, keeper = self.pid, self.keeper
        if pid is None or not alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not alive(pid), what="daemon exit")
            if keeper is not None:
                wait_for(lambda: not alive(keeper), what="keeper exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            reap_adopted()


class TryLoop(threading.Thread):
    """Calls `attempt` over and over until finish(), counting the tries it
    answered (it returned True) and those refused (ConnectionRefusedError, or
    FileNotFoundError for a socket path not there); any other OSError (a
    connection closed under it, say by a re-exec) counts as neither."""

    def __init__(self, attempt: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.attempt = attempt
        self.refused = 0
        self.answered = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.attempt():
                    self.answered += 1
            except (ConnectionRefusedError, FileNotFoundError):
                self.refused += 1
            except (OSError, http.client.HTTPException):
                pass

    def finish(self) -> None:
        self.stopping.set()
        self.join(DEADLINE)
