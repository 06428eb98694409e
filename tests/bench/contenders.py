"""The two contenders behind one interface: the installed superd, and
supervisord 4.3.0 from a venv of its own. Each runs as a real detached daemon
in its own temporary folder, is driven over its own control socket with a
raw client, and runs the same workers, logging to files in that folder."""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from probes import BenchTimeout

from superd.protocol import HEADER, MAX_REPLY, Decoder, Kind, encode
from support import alive, proc_stat, reap_adopted

SUPERVISOR = "supervisor==4.3.0"
States = dict[str, tuple[str, int | None]]  # instance -> (state, pid)


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    argv: tuple[str, ...]
    numprocs: int


class Daemon(ABC):
    """One daemon under test: launch, observe, command, shut down."""

    label: str
    # Times the daemon closed a client connection we meant to keep open.
    closed_on_us = 0

    def __init__(self, folder: Path, workers: Sequence[WorkerSpec], env: dict[str, str],
                 timeout: float) -> None:
        folder.mkdir(parents=True)
        (folder / "run").mkdir()
        (folder / "log").mkdir()
        self.folder = folder
        self.workers = workers
        self.env = env
        self.timeout = timeout
        self.pidfile = folder / "run" / f"{self.label}.pid"
        self.write_config()

    @property
    def instances(self) -> int:
        return sum(worker.numprocs for worker in self.workers)

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def helpers(self) -> list[int]:
        """Processes the daemon keeps above itself (superd's keeper), found as
        its parent when that is neither this bench (the subreaper that adopts a
        detached daemon) nor init."""
        stat = proc_stat(self.pid)
        if stat is None or stat[1] in (os.getpid(), 0, 1):
            return []
        return [stat[1]]

    def launch(self) -> None:
        """Run the daemon's own start command; it returns once it has detached."""
        try:
            started = subprocess.run(self.launch_argv(), env=self.env, cwd=self.folder,
                                     stdin=subprocess.DEVNULL, capture_output=True,
                                     text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BenchTimeout(f"{self.label} did not start within {self.timeout}s") from None
        if started.returncode != 0:
            raise RuntimeError(f"{self.label} failed to start: {started.stderr.strip()}")

    def shutdown(self) -> None:
        """SIGTERM the daemon (it stops its workers), SIGKILL it at the deadline."""
        self.close_client()
        try:
            pid = self.pid
        except (OSError, ValueError):
            return
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        reap_adopted()

    @abstractmethod
    def write_config(self) -> None: ...

    @abstractmethod
    def launch_argv(self) -> list[str]: ...

    @abstractmethod
    def ctl_status_argv(self) -> list[str]: ...

    @abstractmethod
    def states(self) -> States: ...

    @abstractmethod
    def timed_status(self) -> float:
        """Seconds for one raw status of every instance, until the whole reply is in."""

    @abstractmethod
    def timed_ping(self) -> float: ...

    @abstractmethod
    def start_all(self) -> None:
        """Start every instance and return once the daemon says all are RUNNING."""

    @abstractmethod
    def stop_all(self) -> None: ...

    @abstractmethod
    def close_client(self) -> None: ...


# -- superd -------------------------------------------------------------------

class WireClient:
    """superd's wire protocol over a persistent AF_UNIX connection."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.decoder = Decoder(MAX_REPLY)
        self.next_id = 1

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> tuple[float, Any]:
        """(seconds until the reply's last byte arrived, the decoded result)."""
        request_id, self.next_id = self.next_id, self.next_id + 1
        frame = encode(Kind.REQUEST, {"id": request_id, "cmd": cmd, "args": args or {}})
        began = time.perf_counter()
        self.sock.sendall(frame)
        data = self._read_frame()
        elapsed = time.perf_counter() - began
        [(kind, reply)] = self.decoder.feed(data)
        if kind != Kind.REPLY or reply.get("id") != request_id or not reply["ok"]:
            raise RuntimeError(f"superd answered {cmd} with {reply}")
        return elapsed, reply["result"]

    def _read_frame(self) -> bytes:
        data = bytearray()
        needed = HEADER.size
        while len(data) < needed:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("superd closed the connection")
            data += chunk
            if len(data) >= HEADER.size:
                needed = HEADER.size + HEADER.unpack_from(data)[3]
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


class SuperdDaemon(Daemon):
    label = "superd"
    bin_dir = Path(sys.executable).parent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.client: WireClient | None = None
        super().__init__(*args, **kwargs)
        self.socket = str(self.folder / "run" / "superd.sock")

    def write_config(self) -> None:
        workers = {worker.name: self._worker(worker) for worker in self.workers}
        document = {"daemon": {"socket": "run/superd.sock", "pidfile": "run/superd.pid",
                               "log_dir": "log", "log_file": "log/superd.log",
                               "shutdown_timeout": f"{self.timeout:g}s"},
                    "workers": workers}
        self.config = self.folder / "superd.yaml"
        self.config.write_text(yaml.safe_dump(document, sort_keys=False))

    def _worker(self, worker: WorkerSpec) -> dict[str, Any]:
        # startsecs 0: RUNNING at spawn. A RUNNING instance that dies is spawned
        # again at once (no backoff); the backoff, only for failed starts, is
        # set to none anyway.
        # superd expands ${VAR} and reads $$ as "$": the argv as written is $-escaped,
        # as supervisord's below is %-escaped.
        return {"command": [word.replace("$", "$$") for word in worker.argv],
                "numprocs": worker.numprocs,
                "directory": str(self.folder), "autorestart": "always", "startsecs": 0,
                "startretries": "forever", "backoff": {"initial": 0, "max": 0},
                "stopsignal": "TERM", "stoptimeout": "10s",
                "stdout": {"maxbytes": "50MB", "backups": 5},
                "stderr": {"maxbytes": "50MB", "backups": 5}}

    def launch_argv(self) -> list[str]:
        return [str(self.bin_dir / "superd"), "-c", str(self.config)]

    def ctl_status_argv(self) -> list[str]:
        return [str(self.bin_dir / "superctl"), "-s", self.socket, "status"]

    def _call(self, cmd: str, args: dict[str, Any] | None = None) -> tuple[float, Any]:
        if self.client is None:
            self.client = WireClient(self.socket, self.timeout)
        try:
            return self.client.call(cmd, args)
        except Exception:  # a half-used connection is useless: the next call reconnects
            self.close_client()
            raise

    def states(self) -> States:
        _, rows = self._call("status", {"names": []})
        return {row["name"]: (row["state"], row["pid"]) for row in rows}

    def timed_status(self) -> float:
        return self._call("status", {"names": []})[0]

    def timed_ping(self) -> float:
        return self._call("ping")[0]

    def start_all(self) -> None:
        self._check_rows("start", self._call("start", {"names": ["all"], "wait": True})[1])

    def stop_all(self) -> None:
        self._check_rows("stop", self._call("stop", {"names": ["all"]})[1])

    def _check_rows(self, cmd: str, rows: list[dict[str, Any]]) -> None:
        failed = [row for row in rows if not row["ok"]]
        if failed or len(rows) != self.instances:
            raise RuntimeError(f"superd {cmd} all: {len(rows)} rows, failed {failed[:3]}")

    def close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# -- supervisord --------------------------------------------------------------

SUPERVISORD_CONF = """\
[unix_http_server]
file={folder}/run/supervisor.sock

[supervisord]
logfile={folder}/log/supervisord.log
pidfile={folder}/run/supervisord.pid
childlogdir={folder}/log
loglevel=warn
nodaemon=false
minfds={minfds}
minprocs=100
directory={folder}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{folder}/run/supervisor.sock
"""

SUPERVISORD_PROGRAM = """
[program:{name}]
command={command}
numprocs={numprocs}
process_name=%(program_name)s_%(process_num)d
directory={folder}
autostart=true
autorestart=true
startsecs=0
startretries=1000000
stopsignal=TERM
stopwaitsecs=10
stdout_logfile={folder}/log/%(program_name)s_%(process_num)d.out.log
stdout_logfile_maxbytes=50MB
stdout_logfile_backups=5
stderr_logfile={folder}/log/%(program_name)s_%(process_num)d.err.log
stderr_logfile_maxbytes=50MB
stderr_logfile_backups=5
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class XmlRpcClient:
    """supervisord's XML-RPC over one persistent HTTP/1.1 connection on its unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        self.connection = UnixHTTPConnection(path, timeout)
        self.reconnects = 0  # how often supervisord closed the connection on us

    def call(self, method: str, *params: Any) -> tuple[float, Any]:
        """(seconds until the reply's last byte arrived, the decoded result)."""
        body = xmlrpc.client.dumps(params, method).encode()
        began = time.perf_counter()
        self.connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - began
        if response.will_close:
            self.connection.close()
            self.reconnects += 1
        if response.status != 200:
            raise RuntimeError(f"supervisord answered {method} with HTTP {response.status}")
        return elapsed, xmlrpc.client.loads(data)[0][0]

    def close(self) -> None:
        self.connection.close()


class SupervisordDaemon(Daemon):
    label = "supervisord"
    bin_dir: Path  # set by install_supervisord

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.client: XmlRpcClient | None = None
        super().__init__(*args, **kwargs)
        self.socket = str(self.folder / "run" / "supervisor.sock")

    def write_config(self) -> None:
        text = SUPERVISORD_CONF.format(folder=self.folder, minfds=self._minfds())
        for worker in self.workers:
            command = " ".join(shlex.quote(word) for word in worker.argv)
            text += SUPERVISORD_PROGRAM.format(name=worker.name, numprocs=worker.numprocs,
                                               command=command.replace("%", "%%"),
                                               folder=self.folder)
        self.config = self.folder / "supervisord.conf"
        self.config.write_text(text)

    def _minfds(self) -> int:
        # supervisord closes fds 3..minfds-1 in each child, so minfds must
        # pass its highest fd (about 5 per worker) or children inherit the
        # pipes of others; never more than the hard limit allows.
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        wanted = max(1024, 6 * self.instances + 128)
        return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)

    def launch_argv(self) -> list[str]:
        return [str(self.bin_dir / "supervisord"), "-c", str(self.config)]

    def ctl_status_argv(self) -> list[str]:
        return [str(self.bin_dir / "supervisorctl"), "-c", str(self.config), "status"]

    def _call(self, method: str, *params: Any) -> tuple[float, Any]:
        if self.client is None:
            self.client = XmlRpcClient(self.socket, self.timeout)
        try:
            return self.client.call(method, *params)
        except Exception:  # a half-used connection is useless: the next call reconnects
            self.close_client()
            raise

    def states(self) -> States:
        _, infos = self._call("supervisor.getAllProcessInfo")
        return {f"{info['group']}:{info['name']}": (info["statename"], info["pid"] or None)
                for info in infos}

    def timed_status(self) -> float:
        return self._call("supervisor.getAllProcessInfo")[0]

    def timed_ping(self) -> float:
        return self._call("supervisor.getState")[0]

    def start_all(self) -> None:
        self._check_results("start", self._call("supervisor.startAllProcesses", True)[1])

    def stop_all(self) -> None:
        self._check_results("stop", self._call("supervisor.stopAllProcesses", True)[1])

    def _check_results(self, what: str, results: list[dict[str, Any]]) -> None:
        success = 80  # supervisor.xmlrpc.Faults.SUCCESS
        failed = [result for result in results if result["status"] != success]
        if failed or len(results) != self.instances:
            raise RuntimeError(f"supervisord {what} all: {len(results)} results, "
                               f"failed {failed[:3]}")

    def close_client(self) -> None:
        if self.client is not None:
            self.closed_on_us += self.client.reconnects
            self.client.close()
            self.client = None


def install_supervisord(folder: Path) -> Path:
    """A fresh venv holding supervisord alone; returns its bin folder."""
    venv = folder / "venv-supervisord"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", SUPERVISOR],
                   check=True, stdin=subprocess.DEVNULL)
    return venv / "bin"


def supervisord_version(bin_dir: Path) -> str:
    return subprocess.run([str(bin_dir / "supervisord"), "--version"], check=True,
                          capture_output=True, text=True).stdout.strip()
