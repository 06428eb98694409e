"""superctl top without a terminal: the screen as text, the source of its
answers against a stand-in daemon, and its command line."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superd import cli, cliargs, top
from superd.client import Client
from superd.protocol import MAX_REQUEST, Decoder, Kind, encode

PING = {"version": "0.1.0", "pid": 123, "uptime": 192.4, "reexecs": 0}


def row(name: str, state: str, pid: int | None = None, **fields: Any) -> dict[str, Any]:
    running = pid is not None
    return {"name": name, "worker": name.partition(":")[0], "state": state, "pid": pid,
            "uptime": 75.0 if running else None, "restarts": 0, "exit_status": None,
            "cpu_percent": 1.25 if running else None,
            "rss_bytes": 3 * 1024 * 1024 if running else None, "description": "",
            **fields}


ROWS = [
    row("web:0", "RUNNING", 1001),
    row("idle", "STOPPED"),
    row("web:1", "RUNNING", 1002),
    row("broken", "FATAL", restarts=6),
    row("worker", "STARTING", 1004),
    row("flaky", "BACKOFF", restarts=2),
]


def screen(rows: list[dict[str, Any]], width: int = 80, height: int = 24,
           ping: dict[str, Any] | None = None) -> list[str]:
    return top.plain(top.screen_lines(top.Snapshot(ping or PING, rows), width, height))


# --- the screen ---------------------------------------------------------------


def test_attention_first_then_running_then_stopped_each_in_config_order() -> None:
    names = [line.split()[0] for line in screen(ROWS)[2:]]
    assert names == ["broken", "worker", "flaky", "web:0", "web:1", "idle"]


def test_the_daemon_line_counts_the_states_most_first() -> None:
    first = screen(ROWS, width=120)[0]
    assert first == "superd 0.1.0 pid 123 up 3m12s | " \
        "2 running, 1 backoff, 1 fatal, 1 starting, 1 stopped"
    again = screen(ROWS, ping={**PING, "reexecs": 2})[0]
    assert again.startswith("superd 0.1.0 pid 123 up 3m12s re-execs 2 | ")
    assert screen([])[0].endswith("| no instances")


def test_80_columns_show_every_column_aligned() -> None:
    lines = screen(ROWS)
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS"]
    assert lines[3].split() == ["worker", "STARTING", "1004", "1m15s", "0", "1.2", "3.0M"]
    assert lines[2].split() == ["broken", "FATAL", "-", "-", "6", "-", "-"]
    # Numbers are right-aligned under their titles.
    assert {len(line) for line in lines[1:]} == {len(lines[1])}
    assert len(lines) == 2 + len(ROWS)


def test_the_state_cell_is_styled_by_its_state() -> None:
    lines = top.screen_lines(top.Snapshot(PING, ROWS), 80, 24)
    assert lines[0][0][1] == "title" and lines[1][0][1] == "header"
    assert [(text, style) for text, style in lines[2] if style] == [("FATAL", "FATAL")]


def test_health_column_only_when_a_row_has_health() -> None:
    assert "HEALTH" not in screen(ROWS)[1]
    rows = [*ROWS[:2], row("api", "RUNNING", 1005, health="unhealthy")]
    lines = screen(rows)
    assert lines[1].split()[-1] == "HEALTH"
    assert [line.split()[::7] for line in lines[2:]] == [
        ["web:0", "-"], ["api", "unhealthy"], ["idle", "-"]]


def test_narrow_terminals_drop_columns_from_the_right() -> None:
    lines = screen(ROWS, width=40)
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME"]
    assert all(len(line) <= 40 for line in lines)
    assert lines[2].split() == ["broken", "FATAL", "-", "-"]
    tiny = screen(ROWS, width=12)
    assert all(len(line) <= 12 for line in tiny)
    assert tiny[1:3] == ["NAME    STAT", "broken  FATA"]  # the last column is cut


def test_long_names_are_cut_in_the_middle_keeping_the_instance() -> None:
    rows = [row(f"queue-consumer-for-the-billing-service:{i}", "RUNNING", 2000 + i)
            for i in range(12)]
    lines = screen(rows, width=60)
    names = [line.split()[0] for line in lines[2:]]
    assert len(set(names)) == 12
    assert names[11].endswith("e:11") and "…" in names[11]
    assert all(len(line) <= 60 for line in lines)
    assert screen(rows, width=100)[2].split()[0] == rows[0]["name"]  # room enough


@pytest.mark.parametrize(("text", "width", "cut"), [
    ("web:0", 5, "web:0"), ("abcdefghij", 5, "ab…ij"), ("abcdefghij", 2, "a…"),
    ("abcdefghij", 1, "a"), ("abcdefghij", 0, ""),
])
def test_shorten(text: str, width: int, cut: str) -> None:
    assert top.shorten(text, width, "…") == cut
    assert len(top.shorten(text, width, "...")) == min(width, len(text))


def test_a_short_terminal_shows_what_fits_and_how_many_more() -> None:
    lines = screen(ROWS, height=5)
    assert lines[2:] == [lines[2], lines[3], "… 4 more"]
    assert lines[2].startswith("broken") and lines[3].startswith("worker")
    assert screen(ROWS, height=2) == screen(ROWS)[:2]
    assert screen(ROWS, height=1) == screen(ROWS)[:1]
    assert top.screen_lines(top.Snapshot(PING, ROWS), 0, 0) == []


def test_an_unreachable_daemon_is_one_line() -> None:
    snapshot = top.Snapshot(error="superd unreachable: superd closed the connection")
    lines = top.screen_lines(snapshot, 80, 24)
    assert top.plain(lines) == ["superd unreachable: superd closed the connection"]
    assert lines[0][0][1] == "alert"


STATES = st.sampled_from([*top.GROUPS, "NEWSTATE"])
ROW = st.builds(lambda name, state, pid, health: row(name, state, pid, health=health),
                st.text("abc:-_09", min_size=1, max_size=70), STATES,
                st.none() | st.integers(1, 4_194_304),
                st.none() | st.sampled_from(top.HEALTH_VALUES))


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=30), st.integers(-1, 130), st.integers(-1, 40))
def test_no_line_is_wider_or_lower_than_the_terminal(
    rows: list[dict[str, Any]], width: int, height: int
) -> None:
    lines = top.screen_lines(top.Snapshot(PING, rows), width, height)
    assert len(lines) <= max(height, 0)
    assert all(sum(len(text) for text, _ in line) <= width for line in lines)
    if width > 0 and height >= 3 and rows:
        assert len(lines) == min(height, 2 + len(rows))


# --- asking superd --------------------------------------------------------------


class StandIn:
    """A daemon that answers ping and status, hanging up after `replies`
    replies on each connection (as a re-exec closes them)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], replies: int = 1000,
                 status_error: str | None = None) -> None:
        self.path = str(path)
        self.rows, self.replies, self.status_error = rows, replies, status_error
        self.connections = 0
        self.open: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.open:  # as a daemon that exits closes them
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            with conn, contextlib.suppress(OSError):
                self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        decoder, sent = Decoder(MAX_REQUEST), 0
        while data := conn.recv(65536):
            for _, request in decoder.feed(data):
                if sent == self.replies:
                    return
                conn.sendall(encode(Kind.REPLY, {"id": request["id"], **self._answer(request)}))
                sent += 1

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["cmd"] == "ping":
            return {"ok": True, "result": PING}
        if self.status_error:
            return {"ok": False, "error": {"code": self.status_error, "message": "nope"}}
        return {"ok": True, "result": self.rows}


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[type[StandIn]]:
    made: list[StandIn] = []

    class Made(StandIn):
        def __init__(self, *args: Any, **keys: Any) -> None:
            super().__init__(tmp_path / "superd.sock", *args, **keys)
            made.append(self)

    yield Made
    for daemon in made:
        daemon.close()


def test_the_source_asks_ping_and_status_on_one_connection(
        stand_in: type[StandIn]) -> None:
    daemon = stand_in(ROWS)
    source = top.Source(Client(daemon.path))
    try:
        for _ in range(3):
            assert source.fetch() == top.Snapshot(PING, ROWS)
        assert daemon.connections == 1
    finally:
        source.close()


def test_a_closed_connection_is_replaced_within_the_same_refresh(
        stand_in: type[StandIn]) -> None:
    daemon = stand_in(ROWS, replies=2)  # every connection serves one refresh
    source = top.Source(Client(daemon.path))
    try:
        for _ in range(3):
            assert source.fetch() == top.Snapshot(PING, ROWS)
        assert daemon.connections == 3
    finally:
        source.close()


def test_a_gone_daemon_is_shown_and_asked_again(stand_in: type[StandIn]) -> None:
    daemon = stand_in(ROWS)
    source = top.Source(Client(daemon.path))
    try:
        assert source.fetch() == top.Snapshot(PING, ROWS)
        daemon.close()
        Path(daemon.path).unlink()
        gone = source.fetch()
        assert gone.error.startswith("superd unreachable: ")
        assert source.client is None
        assert source.fetch().error.startswith("superd unreachable: cannot reach superd")
        stand_in(ROWS)
        assert source.fetch() == top.Snapshot(PING, ROWS)
    finally:
        source.close()


def test_no_workers_is_an_empty_table(stand_in: type[StandIn]) -> None:
    daemon = stand_in([], status_error="no_such_worker")  # superd's answer to "all"
    source = top.Source(Client(daemon.path))
    try:
        assert source.fetch() == top.Snapshot(PING, [])
        assert source.client is not None
    finally:
        source.close()


def test_an_error_reply_is_shown_on_a_fresh_connection_each_time(
        stand_in: type[StandIn]) -> None:
    daemon = stand_in([], status_error="internal")
    source = top.Source(Client(daemon.path))
    try:
        assert source.fetch() == top.Snapshot(error="superd: nope")
        assert source.client is None
        assert source.fetch() == top.Snapshot(error="superd: nope")
        assert daemon.connections == 2
    finally:
        source.close()


# --- the command line -------------------------------------------------------------


def test_top_takes_a_delay() -> None:
    assert cliargs.parse_args(["top"], cli.COMMANDS).delay == 1.0
    assert cliargs.quick_parse(["-s", "x", "top"]) is not None
    parsed = cliargs.parse_args(["-s", "x", "top", "-d", "0.2"], cli.COMMANDS)
    assert (parsed.command, parsed.delay) == ("top", 0.2)
    assert cliargs.parse_args(["top", "--delay=3"], cli.COMMANDS).delay == 3.0


@pytest.mark.parametrize("delay", ["0", "-1", "nan", "inf", "soon", ""])
def test_a_delay_that_is_not_a_positive_number_is_a_usage_error(
        delay: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-s", "/nonexistent", "top", "-d", delay]) == cli.EXIT_USAGE
    assert "expected a positive number of seconds" in capsys.readouterr().err
