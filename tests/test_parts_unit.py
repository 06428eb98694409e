"""Small pieces on their own: names, exit descriptions, the event bus, waiters,
the loop's one owner per fd, log follow handles, config keys from dataclasses."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superd import config
from superd.config import DEFAULT_LOG
from superd.events import EventBus
from superd.exits import describe_exit, describe_wait_status
from superd.logfile import LogFile
from superd.loop import FdOwned, Loop
from superd.names import instance_index, instance_name, log_name

worker_names = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)


@given(worker_names, st.integers(min_value=1, max_value=64), st.data())
def test_instance_names_read_back(worker: str, numprocs: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=numprocs - 1))
    name = instance_name(worker, index, numprocs)
    assert name == (worker if numprocs == 1 else f"{worker}:{index}")
    assert instance_index(name) == (0 if numprocs == 1 else index)
    assert ":" not in log_name(name)


def test_worker_config_names_its_instances_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "superd.yaml"
    path.write_text("workers:\n  web: {command: [x], numprocs: 3}\n  one: {command: [x]}\n")
    loaded = config.load(str(path))
    assert loaded.workers["web"].instance_names() == [instance_name("web", i, 3) for i in range(3)]
    assert loaded.workers["one"].instance_names() == ["one"]


def test_exit_descriptions() -> None:
    assert describe_exit(None) == ""
    assert describe_exit(0) == "exit 0"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert describe_wait_status(status) == "exited 3"


def test_superctl_and_the_daemon_describe_exits_with_one_function(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from superd import cli, exits, status

    assert status.describe_exit is describe_exit
    # superctl imports it only when a row needs it, from the same module.
    monkeypatch.setattr(exits, "describe_exit", lambda exit_status: f"told {exit_status}")
    assert cli.describe_exit(-9) == "told -9"


def test_config_keys_come_from_the_dataclasses() -> None:
    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(config.WORKER_KEYS) == names(config.WorkerConfig) - {"name", "env_file_vars",
                                                                    "completed_deps",
                                                                    "base_dir"}
    assert set(config.DAEMON_KEYS) == names(config.DaemonConfig)
    assert set(config.SOCKET_KEYS) == names(config.SocketConfig) - {"name"}
    assert set(config.STDERR_KEYS) == names(config.LogConfig)
    assert set(config.STDOUT_KEYS) == names(config.LogConfig) - {"merge"}
    assert set(config.TOP_KEYS) == names(config.Config) - {"path", "sources"}


def test_bus_delivers_in_order_and_unsubscribes() -> None:
    bus = EventBus()
    seen: list[tuple[str, object]] = []
    stop_first = bus.subscribe(lambda event: seen.append(("first", event["n"])))
    bus.subscribe(lambda event: seen.append(("second", event["n"])))
    bus.publish({"n": 1})
    stop_first()
    stop_first()  # twice is harmless
    bus.publish({"n": 2})
    assert seen == [("first", 1), ("second", 1), ("second", 2)]


def test_loop_refuses_a_second_owner_of_an_fd() -> None:
    loop = Loop()
    read_end, write_end = os.pipe()
    try:
        loop.add_reader(read_end, lambda: None)
        with pytest.raises(FdOwned):
            loop.add_reader(read_end, lambda: None)
        loop.add_writer(write_end, lambda: None)
        with pytest.raises(FdOwned):
            loop.add_writer(write_end, lambda: None)
        loop.remove_reader(read_end)
        loop.add_reader(read_end, lambda: None)  # free again once given up
        assert loop.has_reader(read_end) and loop.has_writer(write_end)
        loop.remove_reader(read_end)
        loop.remove_writer(write_end)
    finally:
        loop.close()
        os.close(read_end)
        os.close(write_end)


def test_follow_handle_stops_the_stream(tmp_path: Path) -> None:
    log_file = LogFile(str(tmp_path / "a.log"), DEFAULT_LOG)
    log_file.open()
    try:
        got: list[bytes] = []
        follow = log_file.follow(got.append)
        log_file.write(b"one\n")
        follow.cancel()
        follow.cancel()
        log_file.write(b"two\n")
        assert got == [b"one\n"]
        assert (tmp_path / "a.log").read_bytes() == b"one\ntwo\n"
    finally:
        log_file.close()


def test_a_failing_log_file_reports_once_per_episode(tmp_path: Path) -> None:
    reports: list[tuple[str, str]] = []
    (tmp_path / "plain").write_text("a file where a folder should be")
    path = tmp_path / "plain" / "a.log"
    log_file = LogFile(str(path), DEFAULT_LOG,
                       lambda where, message: reports.append((where, message)))
    log_file.open()
    log_file.write(b"x")
    log_file.write(b"y")
    assert [where for where, _ in reports] == [str(path)]
    assert log_file.dropped == 2


@pytest.mark.parametrize("words", [
    [], ["-c", "a.yaml"], ["--config", "a.yaml", "--foreground"], ["--check", "-c", "b"],
    ["--foreground", "--check"], ["-c", "a", "-c", "b"], ["--foreground", "--foreground"],
])
def test_the_daemons_quick_parse_agrees_with_argparse(words: list[str]) -> None:
    from superd.daemonargs import _argparse, _quick_parse

    assert _quick_parse(words) == _argparse(words)


@pytest.mark.parametrize("words", [["--config=a"], ["-c"], ["-c", "--check"], ["--help"],
                                   ["--version"], ["-ca"], ["--fore"]])
def test_the_daemons_quick_parse_leaves_the_rest_to_argparse(words: list[str]) -> None:
    from superd.daemonargs import _quick_parse

    assert _quick_parse(words) is None


def test_the_daemon_leaves_big_modules_it_does_not_need_unimported() -> None:
    # Each would stay in the daemon's memory for good (typing alone is 0.7 MB).
    code = ("import sys; from superd import daemon; daemon.parse_args(['-c', 'x']); "
            "print(sorted({'typing', 'argparse', 'random', 'configparser'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
