"""superctl and its client against a fake daemon thread that answers canned replies."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import superd
from superd import cli, cliargs
from superd.client import Client, CommandFailed, DaemonUnreachable
from superd.protocol import MAX_REQUEST, Decoder, Kind, encode

REPO = Path(__file__).resolve().parent.parent

Answer = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def ok(result: object) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class FakeDaemon:
    """Accepts connections and answers each request with answer(request).

    answer may return None to hang up instead of replying.
    """

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = str(path)
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            # A client that hangs up early must not end the fake daemon.
            with conn, contextlib.suppress(OSError):
                self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        decoder = Decoder(MAX_REQUEST)
        while data := conn.recv(65536):
            for kind, request in decoder.feed(data):
                assert kind == Kind.REQUEST
                self.requests.append(request)
                reply = self.answer(request)
                if reply is None:
                    return
                conn.sendall(encode(Kind.REPLY, {"id": request["id"], **reply}))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Answer], FakeDaemon]]:
    daemons: list[FakeDaemon] = []

    def start(answer: Answer) -> FakeDaemon:
        daemons.append(FakeDaemon(tmp_path / "superd.sock", answer))
        return daemons[-1]

    yield start
    for daemon in daemons:
        daemon.close()


def superctl(daemon: FakeDaemon, *argv: str) -> int:
    return cli.main(["-s", daemon.path, *argv])


STATUS_ROWS: list[dict[str, Any]] = [
    {
        "name": "web:0",
        "worker": "web",
        "state": "RUNNING",
        "pid": 4242,
        "uptime": 192.0,
        "restarts": 0,
        "exit_status": None,
        "cpu_percent": None,
        "rss_bytes": None,
        "description": "",
    },
    {
        "name": "queue-consumer",
        "worker": "queue-consumer",
        "state": "FATAL",
        "pid": None,
        "uptime": None,
        "restarts": 12,
        "exit_status": -9,
        "cpu_percent": None,
        "rss_bytes": None,
        "description": "",
    },
]


# --- formatting helpers -----------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (5.9, "5s"),
        (192, "3m12s"),
        (3720, "1h02m"),
        (2 * 3600 + 5 * 60 + 59, "2h05m"),
        (3 * 86400 + 4 * 3600 + 1, "3d04h"),
        (-1, "0s"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert cli.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (512, "512B"),
        (2048, "2.0K"),
        (int(12.3 * 1024 * 1024), "12.3M"),
        (3 * 1024**3, "3.0G"),
    ],
)
def test_format_bytes(size: int | None, text: str) -> None:
    assert cli.format_bytes(size) == text


def test_describe_exit() -> None:
    assert cli.describe_exit(1) == "exit 1"
    assert cli.describe_exit(-9) == "killed by SIGKILL"
    assert cli.describe_exit(-200) == "killed by signal 200"


def test_exit_note_prefers_description_and_skips_running() -> None:
    assert cli.exit_note({"state": "EXITED", "exit_status": 1, "description": ""}) == "exit 1"
    assert cli.exit_note({"state": "FATAL", "exit_status": 2, "description": "bad"}) == "bad"
    assert cli.exit_note({"state": "RUNNING", "exit_status": 1, "description": ""}) == ""
    assert cli.exit_note({"state": "STOPPED", "exit_status": None}) == ""
    shortage = "cannot start: Too many open files (EMFILE); retrying"
    # A first start that superd cannot make: no exit yet, the cause still shows.
    assert cli.exit_note({"state": "BACKOFF", "exit_status": None,
                          "description": shortage}) == shortage


def test_colour_keeps_alignment() -> None:
    plain = cli.status_table(STATUS_ROWS, colour=False)
    painted = cli.status_table(STATUS_ROWS, colour=True)
    assert "\x1b[32mRUNNING\x1b[0m" in painted[1]
    assert "\x1b[31mFATAL\x1b[0m" in painted[2]
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in painted] == plain


def test_render_table_pads_columns_and_trims_line_ends() -> None:
    table = [["NAME", "STATE", "NOTE"], ["web:10", "RUNNING", ""], ["db", "FATAL", "exit 1"]]
    assert cli.render_table(table) == [
        "NAME    STATE    NOTE",
        "web:10  RUNNING",
        "db      FATAL    exit 1",
    ]


def test_no_color_env_disables_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not cli.wants_colour()
    monkeypatch.delenv("NO_COLOR")
    assert cli.wants_colour()


# --- commands against the fake daemon ---------------------------------------


def test_ping(serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]) -> None:
    daemon = serve(lambda req: ok({"version": "0.1.0", "pid": 77, "uptime": 3725.5}))
    assert superctl(daemon, "ping") == 0
    assert capsys.readouterr().out == "superd 0.1.0 pid 77 uptime 1h02m\n"
    assert daemon.requests == [{"id": 1, "cmd": "ping", "args": {}}]


def test_status_table_is_aligned_and_not_all_running_exits_3(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: ok(STATUS_ROWS))
    assert superctl(daemon, "status", "web", "queue-consumer") == 3
    assert daemon.requests[0]["args"] == {"names": ["web", "queue-consumer"]}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "EXIT"]
    assert "CPU%" not in lines[0]
    assert "killed by SIGKILL" in lines[2]
    assert "\x1b[" not in "".join(lines)
    for column in ("STATE", "PID", "UPTIME", "RESTARTS"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines)


def test_status_shows_usage_columns_when_known(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    row = {**STATUS_ROWS[0], "cpu_percent": 1.25, "rss_bytes": 12_900_000}
    daemon = serve(lambda req: ok([row]))
    assert superctl(daemon, "status") == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS"]
    assert line.split() == ["web:0", "RUNNING", "4242", "3m12s", "0", "1.2", "12.3M"]


def test_status_empty_list_exits_0(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: ok([]))
    assert superctl(daemon, "status") == 0
    assert daemon.requests[0]["args"] == {"names": []}


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"]])
def test_status_json(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    daemon = serve(lambda req: ok(STATUS_ROWS))
    assert superctl(daemon, *argv) == 3
    rows = json.loads(capsys.readouterr().out)
    required = {"name", "worker", "state", "pid", "uptime", "restarts", "exit_status"}
    assert all(required | {"cpu_percent", "rss_bytes"} <= row.keys() for row in rows)
    assert rows == STATUS_ROWS


def test_start_waits_by_default_and_reports_each_instance(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = [
        {"name": "web:0", "state": "RUNNING", "ok": True, "error": None},
        {"name": "web:1", "state": "FATAL", "ok": False, "error": "exited too quickly"},
    ]
    daemon = serve(lambda req: ok(outcome))
    assert superctl(daemon, "start", "web") == 1
    assert daemon.requests[0]["args"] == {"names": ["web"], "wait": True}
    assert capsys.readouterr().out == "web:0: started\nweb:1: FATAL (exited too quickly)\n"


def test_start_no_wait_and_stop_succeed(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: ok([{"name": "web", "state": "X", "ok": True, "error": None}]))
    assert superctl(daemon, "start", "--no-wait", "all") == 0
    assert superctl(daemon, "stop", "all") == 0
    assert superctl(daemon, "restart", "web") == 0
    assert [(r["cmd"], r["args"]) for r in daemon.requests] == [
        ("start", {"names": ["all"], "wait": False}),
        ("stop", {"names": ["all"]}),
        ("restart", {"names": ["web"], "wait": True}),
    ]
    assert capsys.readouterr().out == "web: starting\nweb: stopped\nweb: restarted\n"


def test_restart_rolling_asks_for_a_roll_and_fails_with_a_row(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = [{"name": "web:0", "state": "RUNNING", "ok": True, "error": None},
               {"name": "web:1", "state": "FATAL", "ok": False, "error": "exit 3"},
               {"name": "web:2", "state": "RUNNING", "ok": False,
                "error": "not restarted: web:1 failed"}]
    daemon = serve(lambda req: ok(outcome))
    assert superctl(daemon, "restart", "--rolling", "web") == 1
    assert daemon.requests[0]["args"] == {"names": ["web"], "wait": True, "rolling": True}
    assert capsys.readouterr().out == ("web:0: restarted\nweb:1: FATAL (exit 3)\n"
                                       "web:2: RUNNING (not restarted: web:1 failed)\n")


def test_signal_passes_names_and_numbers(serve: Callable[[Answer], FakeDaemon]) -> None:
    daemon = serve(
        lambda req: ok([{"name": "web", "state": "STOPPED", "ok": False, "error": "not running"}])
    )
    assert superctl(daemon, "signal", "HUP", "web") == 1
    assert superctl(daemon, "signal", "9", "web") == 1
    assert [r["args"] for r in daemon.requests] == [
        {"signal": "HUP", "names": ["web"]},
        {"signal": 9, "names": ["web"]},
    ]


def test_shutdown(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: ok({}))
    assert superctl(daemon, "shutdown") == 0
    assert capsys.readouterr().out == "superd stopped\n"


def test_error_reply_exits_1_with_message_on_stderr(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: error("no_such_worker", "no such worker: nope"))
    assert superctl(daemon, "stop", "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "superctl: no such worker: nope\n"


def test_unexpected_result_shape_is_one_line(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: ok("surprise"))
    assert superctl(daemon, "status") == 1
    assert capsys.readouterr().err.startswith("superctl: unexpected reply from superd")


def test_daemon_hanging_up_exits_4(
    serve: Callable[[Answer], FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve(lambda req: None)
    assert superctl(daemon, "ping") == 4
    assert capsys.readouterr().err == "superctl: superd closed the connection\n"


def test_missing_socket_exits_4_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run" / "superd.sock"
    assert cli.main(["-s", str(path), "status"]) == 4
    err = capsys.readouterr().err
    assert err == f"superctl: cannot reach superd at {path}: No such file or directory\n"


def test_refused_socket_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert cli.main(["-s", str(path), "ping"]) == 4
    assert "Connection refused" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["start"],
        ["stop"],
        ["restart"],
        ["signal", "HUP"],
        ["-s", "x", "-c", "y", "ping"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: superctl" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "status" in capsys.readouterr().out


# --- finding the socket -----------------------------------------------------


def fake_config_module(socket_path: str | None) -> types.ModuleType:
    module = types.ModuleType("superd.config")

    def find_path(cli_value: str | None) -> str:
        return cli_value or "default.yaml"

    def load(path: str) -> object:
        if socket_path is None:
            raise ValueError(f"{path}:3: daemon.socket: expected a path")
        return types.SimpleNamespace(daemon=types.SimpleNamespace(socket=socket_path))

    module.find_path = find_path  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def use_fake_config(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> None:
    # Both places Python may find it: the module table and the package attribute.
    monkeypatch.setitem(sys.modules, "superd.config", module)
    monkeypatch.setattr(superd, "config", module, raising=False)


def test_socket_from_config(
    serve: Callable[[Answer], FakeDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = serve(lambda req: ok({"version": "0.1.0", "pid": 1, "uptime": 1}))
    monkeypatch.delenv("SUPERD_SOCKET", raising=False)
    use_fake_config(monkeypatch, fake_config_module(daemon.path))
    assert cli.main(["-c", "superd.yaml", "ping"]) == 0


def test_socket_env_beats_config_as_spec_orders(
    serve: Callable[[Answer], FakeDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = serve(lambda req: ok({"version": "0.1.0", "pid": 1, "uptime": 1}))
    monkeypatch.setenv("SUPERD_SOCKET", daemon.path)
    use_fake_config(monkeypatch, fake_config_module("/nonexistent.sock"))
    assert cli.main(["-c", "superd.yaml", "ping"]) == 0


def test_socket_env_is_used_without_config(
    serve: Callable[[Answer], FakeDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = serve(lambda req: ok({"version": "0.1.0", "pid": 1, "uptime": 1}))
    monkeypatch.setenv("SUPERD_SOCKET", daemon.path)
    use_fake_config(monkeypatch, fake_config_module(None))
    assert cli.main(["ping"]) == 0


def test_config_error_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SUPERD_SOCKET", raising=False)
    use_fake_config(monkeypatch, fake_config_module(None))
    assert cli.main(["-c", "bad.yaml", "status"]) == 2
    assert capsys.readouterr().err == "superctl: bad.yaml:3: daemon.socket: expected a path\n"


def test_socket_option_never_imports_yaml(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from superd.cli import main\n"
        f"rc = main(['-s', {str(tmp_path / 'missing.sock')!r}, 'status'])\n"
        "loaded = [m for m in ('yaml', 'superd.config') if m in sys.modules]\n"
        "print(rc, loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout == "4 []\n"
    assert "Traceback" not in done.stderr


# --- the quick command line parser -----------------------------------------

# Anything, and forms close to the common ones (where the two parsers could
# disagree without either refusing).
TOKENS = [
    "-s", "-c", "--socket", "--config", "--json", "--no-wait", "--rolling", "--socket=x", "-sx",
    "--sock",
    "-h", "--help", "--", "-9", "-n", "5", "-f", "--stderr", "", "x", "web", "all", "HUP",
    *cli.COMMANDS, "bogus",
]
GLOBAL_OPTIONS = [["-s", "x"], ["-c", "f.yaml"], ["--socket", ""], ["--config", "f"], ["--json"]]
AFTER_COMMAND = ["--json", "--no-wait", "--rolling", "web", "all", "HUP", "", "status"]
ARGVS = st.lists(st.sampled_from(TOKENS), max_size=7) | st.builds(
    lambda options, command, rest: [token for option in options for token in option]
    + [command, *rest],
    st.lists(st.sampled_from(GLOBAL_OPTIONS), max_size=2),
    st.sampled_from(list(cli.COMMANDS)),
    st.lists(st.sampled_from(AFTER_COMMAND), max_size=4),
)


@functools.cache
def argparse_parser() -> argparse.ArgumentParser:
    return cliargs.build_parser(cli.COMMANDS)


def parsed_by_argparse(argv: list[str]) -> cliargs.Args | None:
    """What argparse makes of argv, or None where it exits (usage error, help)."""
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        try:
            return cliargs.Args(**vars(argparse_parser().parse_args(argv)))
        except SystemExit:
            return None


@settings(max_examples=1000, deadline=None)
@given(ARGVS)
def test_quick_parser_agrees_with_argparse_wherever_it_answers(argv: list[str]) -> None:
    quick = cliargs.quick_parse(argv)
    if quick is not None:
        assert quick == parsed_by_argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["-s", "x", "status"],
        ["-s", "x", "--json", "status", "web:0", "db"],
        ["--socket", "x", "status", "--json"],
        ["-c", "superd.yaml", "ping"],
        ["ping"],
        ["start", "--no-wait", "web", "db"],
        ["-s", "x", "restart", "web", "--no-wait", "--json"],
        ["restart", "--rolling", "web"],
        ["-s", "x", "stop", "all"],
        ["signal", "HUP", "web"],
        ["shutdown"], ["reopen"], ["reload"], ["events", "--json"], ["-s", "x", "top"],
        ["-s", "x", "metrics"], ["metrics", "--json"],
    ],
)
def test_common_forms_skip_argparse(argv: list[str]) -> None:
    quick = cliargs.quick_parse(argv)
    assert quick is not None
    assert quick == parsed_by_argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [], ["-h"], ["status", "--help"], ["--sock", "x", "ping"], ["--socket=x", "ping"],
        ["-s", "x", "-c", "y", "ping"], ["-s", "x", "-s", "y", "ping"], ["-s"], ["-s", "-c"],
        ["bogus"], ["start"], ["ping", "extra"], ["status", "--no-wait"], ["signal", "HUP"],
        ["status", "-x"], ["start", "--rolling", "web"], ["logs", "web:0"],
        ["signal", "HUP", "--json", "web"],
        ["top", "-d", "0.5"],
    ],
)
def test_the_rest_is_left_to_argparse(argv: list[str]) -> None:
    assert cliargs.quick_parse(argv) is None


def test_every_command_is_in_the_argparse_grammar() -> None:
    subparsers = next(a for a in argparse_parser()._actions if a.dest == "command")
    assert subparsers.choices is not None
    assert set(subparsers.choices) == set(cli.COMMANDS)
    # logs takes options with values; completion a choice of shells.
    assert set(cliargs.QUICK_GRAMMAR) == set(cli.COMMANDS) - {"logs", "completion"}


# --- start-up cost ------------------------------------------------------------

# What the common commands must not import: each costs a run of superctl
# milliseconds (typing, argparse and its parser, the enums that socket and
# signal build, json with the re and enum it imports, collections), the
# config (yaml) only when it is asked for, curses only for `top`.
LAZY_MODULES = ("argparse", "typing", "socket", "signal", "superd.exits", "yaml",
                "superd.config", "json", "re", "enum", "collections", "curses",
                "superd.completion")
# What output in JSON imports: json, and through it re, enum and collections.
JSON_OUTPUT = ("json", "re", "enum", "collections")


def any_answer(request: dict[str, Any]) -> dict[str, Any]:
    if request["cmd"] == "ping":
        return ok({"version": "0.1.0", "pid": 1, "uptime": 1})
    if request["cmd"] == "status":
        return ok(STATUS_ROWS[:1])
    return ok([{"name": "web:0", "state": "RUNNING", "ok": True, "error": None}])


@pytest.mark.parametrize(
    "argv",
    [["status"], ["status", "web"], ["--json", "status", "web"], ["ping"], ["start", "web"],
     ["stop", "web"], ["restart", "--no-wait", "web"], ["signal", "HUP", "web"], ["shutdown"],
     ["reopen"]],
)
def test_common_commands_import_only_what_they_need(
    serve: Callable[[Answer], FakeDaemon], argv: list[str]
) -> None:
    daemon = serve(any_answer)
    lazy = set(LAZY_MODULES) - set(JSON_OUTPUT if "--json" in argv else ())
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from superd.cli import main\n"
        f"rc = main(['-s', {daemon.path!r}, *{argv!r}])\n"
        f"print(rc, sorted((set(sys.modules) - before) & {lazy!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "0 []"
    assert done.stderr == ""



def test_the_superctl_command_imports_only_what_status_needs(
    serve: Callable[[Answer], FakeDaemon]
) -> None:
    # The command as installed, run through its #! line: pip's wrapper for an
    # entry point imported re before superd.cli was even loaded.
    superctl = Path(sys.executable).with_name("superctl")
    assert superctl.read_text().startswith("#!/"), "pip rewrites #!python to its interpreter"
    daemon = serve(any_answer)
    done = subprocess.run(
        [str(superctl), "-s", daemon.path, "status"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("NAME ")
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"superd.cli", "superd.client", "superd.jsoncodec"} <= imported
    assert imported & set(LAZY_MODULES) == set()

# --- the client -------------------------------------------------------------


def test_pipelined_replies_match_their_ids(serve: Callable[[Answer], FakeDaemon]) -> None:
    daemon = serve(lambda req: ok(req["args"]["n"]))
    with Client(daemon.path) as client:
        ids = [client.send("echo", {"n": n}) for n in range(5)]
        assert ids == [1, 2, 3, 4, 5]
        # Collect out of order: earlier replies stay buffered until asked for.
        assert client.wait(ids[3]) == 3
        assert client.wait(ids[0]) == 0
        assert [client.wait(i) for i in (ids[4], ids[1], ids[2])] == [4, 1, 2]
        assert client.request("echo", {"n": 9}) == 9


def test_client_raises_command_failed(serve: Callable[[Answer], FakeDaemon]) -> None:
    daemon = serve(lambda req: error("unknown_command", "unknown command: nope"))
    with Client(daemon.path) as client, pytest.raises(CommandFailed) as failure:
        client.request("nope", {})
    assert (failure.value.code, failure.value.message) == (
        "unknown_command",
        "unknown command: nope",
    )


def test_client_fails_on_connection_level_error(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        with Client(path) as client:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(encode(Kind.REPLY, {"id": None, **error("bad_frame", "bad magic")}))
                with pytest.raises(CommandFailed, match="bad magic"):
                    client.request("ping", {})


@pytest.mark.parametrize("send_first", [True, False])
def test_a_refused_connection_is_unreachable_with_the_reason(
        tmp_path: Path, send_first: bool) -> None:
    path = str(tmp_path / "s.sock")
    refusal = {"id": None, **error("too_many_connections", "superd serves at most 3")}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        with Client(path) as client:
            conn, _ = listener.accept()
            conn.sendall(encode(Kind.REPLY, refusal))
            if not send_first:
                conn.close()  # refused before the request was sent: sending fails
            with pytest.raises(DaemonUnreachable, match="refused the connection: .* at most 3"):
                client.request("ping", {})
            conn.close()


def test_client_yields_events_between_replies(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    event = {"event": "state", "name": "web", "from": "STARTING", "to": "RUNNING"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        with Client(path) as client:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(encode(Kind.EVENT, event) + encode(Kind.REPLY, {"id": 1, **ok({})}))
                assert client.request("subscribe", {}) == {}
                assert next(client.events()) == event


def test_client_unreachable_message(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match=r"^cannot reach superd at .*: No such file"):
        Client(str(tmp_path / "missing.sock"))
