"""Starting workers: the vfork path and the forked path give the same child,
and the keeper above a detached daemon takes the workers down with it."""

from __future__ import annotations

import ast
import os
import pwd
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from superd import spawn as spawning
from superd.spawn import SpawnSpec, fits_vfork, spawn
from support import Superd, alive, pids_tagged, proc_stat, reap_adopted, wait_for

PY = sys.executable
SLEEPER = ["sleep", "600"]
# What a child can see of how it was started, written as one Python literal.
PROBE = """
import os, resource, sys
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status"))
facts = {
    "fds": sorted(os.listdir("/proc/self/fd")),
    "cwd": os.getcwd(),
    "umask": os.umask(0),
    "leader": os.getsid(0) == os.getpid() == os.getpgid(0),
    "env": sorted(k for k in os.environ if k.startswith(("LISTEN_", "PROBE"))),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    "stdin": os.readlink("/proc/self/fd/0"),
}
sys.stdout.write(repr(facts))
"""


def worker(command: list[str], **keys: object) -> dict[str, object]:
    return {"command": command, "startsecs": "200ms", **keys}


def run_to_exit(spec: SpawnSpec, guarded: bool, out: int) -> tuple[bytes, int]:
    """Spawn, wait for the child's exit, and return (its stdout, wait status)."""
    pid = spawn(spec, guarded)
    os.close(spec.stdout_fd)
    if spec.stderr_fd != spec.stdout_fd:
        os.close(spec.stderr_fd)
    output = b""
    while chunk := os.read(out, 65536):
        output += chunk
    os.close(out)
    _, status = os.waitpid(pid, 0)
    return output, status


def probe_spec(folder: Path, argv: list[str]) -> tuple[SpawnSpec, int]:
    read, write = os.pipe()
    env = dict(os.environ, PROBE="1", LISTEN_FDS="9")  # LISTEN_* must not leak through
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    spec = SpawnSpec(argv=tuple(argv), env=env, directory=str(folder), umask=0o027, user=None,
                     stdout_fd=write, stderr_fd=write, nofile=max(64, soft // 2))
    return spec, read


@pytest.fixture
def ignoring_sigpipe() -> Iterator[None]:
    """The daemon's own signal state: Python ignores SIGPIPE, handles SIGTERM."""
    old = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def test_vfork_and_fork_start_the_same_child(tmp_path: Path, ignoring_sigpipe: None) -> None:
    seen = []
    for guarded in (True, False):
        spec, out = probe_spec(tmp_path, [PY, "-I", "-c", PROBE])
        assert fits_vfork(spec)
        output, status = run_to_exit(spec, guarded, out)
        assert os.waitstatus_to_exitcode(status) == 0, output
        seen.append(ast.literal_eval(output.decode()))
    vforked, forked = seen
    assert vforked == forked
    # Beside 0-2, the same descriptors: pytest's inheritable ones (the daemon
    # has none; test_daemon checks a worker sees only 0-2 there).
    assert {"0", "1", "2"} <= set(vforked["fds"])
    assert vforked["cwd"] == str(tmp_path) and vforked["umask"] == 0o027
    assert vforked["leader"] and vforked["stdin"] == "/dev/null"
    assert vforked["env"] == ["PROBE"]
    assert vforked["nofile"] == max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)


def test_vfork_and_fork_children_block_and_ignore_no_signal(tmp_path: Path,
                                                             ignoring_sigpipe: None) -> None:
    # cat, unlike Python, leaves its signal dispositions as exec gave them.
    for guarded in (True, False):
        spec, out = probe_spec(tmp_path, ["cat", "/proc/self/status"])
        output, _ = run_to_exit(spec, guarded, out)
        status = dict(line.split(":\t", 1) for line in output.decode().splitlines())
        assert status["SigBlk"].strip() == "0000000000000000" == status["SigIgn"].strip()


def test_vfork_exec_failure_reads_as_the_forked_one(tmp_path: Path) -> None:
    for argv in (["/no/such/program"], ["no-such-program-anywhere"]):
        spec, out = probe_spec(tmp_path, argv)
        output, status = run_to_exit(spec, True, out)
        assert os.waitstatus_to_exitcode(status) == 127
        assert output.decode().startswith(f"superd: cannot start {argv[0]!r}:")
    spec, out = probe_spec(tmp_path / "missing", ["true"])
    output, status = run_to_exit(spec, True, out)
    assert os.waitstatus_to_exitcode(status) == 127 and b"No such file" in output


def test_users_and_sockets_take_the_forked_path(tmp_path: Path) -> None:
    spec, out = probe_spec(tmp_path, ["true"])
    os.close(out)
    os.close(spec.stdout_fd)
    assert not fits_vfork(SpawnSpec(**{**spec.__dict__, "user": "nobody"}))
    assert not fits_vfork(SpawnSpec(**{**spec.__dict__, "listen_fds": (5,)}))
    assert spawning._VFORK_EXEC is not None  # this CPython's argument list is known


def group_worker(tag: str) -> list[str]:
    # A worker with a second member in its process group.
    return ["sh", "-c", f"sleep 600 & exec sleep 601 # {tag}"]


def test_detached_daemon_has_a_keeper_that_kills_every_worker(superd: Superd) -> None:
    superd.start({"a": worker(group_worker(superd.tag), numprocs=3)})
    rows = wait_for(lambda: all((rows := superd.status()) and [r["pid"] for r in rows])
                    and rows, what="pids")
    assert superd.call("ping")["guard"] == "keeper"
    keeper = superd.keeper
    assert keeper is not None and (proc_stat(superd.pid or 0) or ("", 0))[1] == keeper
    members = wait_for(lambda: len(pids := pids_tagged(superd.tag)) >= 8 and pids,
                       what="workers, their children and the keeper")
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a terminal's or pkill's
        os.kill(keeper, signum)
    assert superd.call("ping")["guard"] == "keeper" and alive(keeper)
    os.kill(superd.pid or 0, signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in members), what="every process to die")
    assert not any(alive(r["pid"]) for r in rows)
    reap_adopted()


def test_a_killed_keeper_leaves_pdeathsig_in_charge(superd: Superd) -> None:
    superd.start({"a": worker(SLEEPER)})
    superd.wait_state("a", "RUNNING")
    keeper = superd.keeper
    assert keeper is not None
    os.kill(keeper, signal.SIGKILL)
    wait_for(lambda: superd.call("ping")["guard"] == "pdeathsig", what="guard to change")
    reap_adopted()
    restarted = superd.call("restart", {"names": ["a"]})
    assert restarted[0]["state"] == "RUNNING"
    pid = superd.status("a")["pid"]
    os.kill(superd.pid or 0, signal.SIGKILL)
    wait_for(lambda: not alive(pid), what="the forked worker to die with superd")
    wait_for(lambda: not pids_tagged(superd.tag), what="no tagged process left")
    reap_adopted()


def test_foreground_daemon_sigkilled_leaves_no_worker(superd: Superd) -> None:
    superd.write_config({"a": worker(SLEEPER, numprocs=2)})
    daemon = subprocess.Popen([PY, "-m", "superd", "--foreground", "-c",
                               str(superd.config_path)], env=superd.env,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(superd.socket), what="socket")
        assert superd.call("ping")["guard"] == "pdeathsig"
        rows = wait_for(lambda: all((rows := superd.status()) and [r["pid"] for r in rows])
                        and rows, what="pids")
        daemon.kill()
        daemon.wait(timeout=20)
        wait_for(lambda: not any(alive(r["pid"]) for r in rows), what="workers to die")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_workers_of_another_user_and_with_sockets_die_with_superd(superd: Superd) -> None:
    # Both take the forked path (PDEATHSIG) even under a keeper.
    superd.start({"other": worker(SLEEPER, user="nobody", directory="/"),
                  "listener": worker(SLEEPER, sockets=["web"])},
                 sockets={"web": {"listen": "tcp://127.0.0.1:0"}})
    rows = wait_for(lambda: all((rows := superd.status()) and [r["pid"] for r in rows])
                    and rows, what="pids")
    other = next(r["pid"] for r in rows if r["name"] == "other")
    assert os.stat(f"/proc/{other}").st_uid == pwd.getpwnam("nobody").pw_uid
    os.kill(superd.pid or 0, signal.SIGKILL)
    wait_for(lambda: not any(alive(r["pid"]) for r in rows), what="workers to die")
    wait_for(lambda: not pids_tagged(superd.tag), what="no tagged process left")
    reap_adopted()


def test_exec_candidates_follow_path_as_execvpe_does() -> None:
    from superd.spawn import _candidates

    assert _candidates("sh", {"PATH": "/a:/b"}) == (b"/a/sh", b"/b/sh")
    assert _candidates("sh", {"PATH": "/c"}) == (b"/c/sh",)  # another PATH, another answer
    assert _candidates("./run", {"PATH": "/a"}) == (b"./run",)
    assert _candidates("sh", {}) == tuple(os.fsencode(os.path.join(folder, "sh"))
                                          for folder in os.defpath.split(os.pathsep))
