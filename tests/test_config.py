"""Unit tests for superd.config: parsing, defaults and error reports."""

from __future__ import annotations

import math
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superd import config
from superd.config import (
    BackoffConfig,
    Config,
    ConfigError,
    ConfigIssue,
    LogConfig,
    ReadyConfig,
    find_path,
    load,
    parse_duration,
    parse_signal,
    parse_size,
)
from superd.names import log_name

REFERENCE_CONFIG = Path(__file__).parents[1] / "config" / "superd.yaml"
MINIMAL_WORKER = "workers:\n  web:\n    command: [sleep, '5']\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "superd.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_text(tmp_path: Path, text: str) -> Config:
    return load(write(tmp_path, text))


def issues(tmp_path: Path, text: str) -> list[tuple[int, str, str]]:
    """(line, key, message) of every issue load() reports for text."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return [(issue.line, issue.key, issue.message) for issue in caught.value.issues]


def keyed(tmp_path: Path, text: str) -> list[tuple[int, str]]:
    return [(line, key) for line, key, _ in issues(tmp_path, text)]


# ---------------------------------------------------------------- defaults


def test_empty_file_is_a_config_with_default_daemon(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "")
    assert loaded.path == str(tmp_path / "superd.yaml")
    assert loaded.workers == {}
    assert loaded.sockets == {}
    daemon = loaded.daemon
    assert daemon.socket == str(tmp_path / "run" / "superd.sock")
    assert daemon.socket_mode == 0o600
    assert daemon.socket_group is None
    assert daemon.pidfile == str(tmp_path / "run" / "superd.pid")
    assert daemon.log_dir == str(tmp_path / "log")
    assert daemon.log_file == str(tmp_path / "log" / "superd.log")
    assert daemon.shutdown_timeout == 30.0
    assert daemon.max_connections == 256


@pytest.mark.parametrize("text", ["workers: {}\n", "workers:\nsockets:\ndaemon:\n"])
def test_empty_sections_are_valid(tmp_path: Path, text: str) -> None:
    assert load_text(tmp_path, text).workers == {}


def test_worker_defaults(tmp_path: Path) -> None:
    worker = load_text(tmp_path, MINIMAL_WORKER).workers["web"]
    assert worker.name == "web"
    assert worker.command == ("sleep", "5")
    assert worker.numprocs == 1
    assert worker.directory == str(tmp_path)
    assert worker.environment == ()
    assert worker.user is None
    assert worker.umask == 0o022
    assert worker.autostart is True
    assert worker.autorestart == "always"
    assert worker.exitcodes == (0,)
    assert worker.startsecs == 1.0
    assert worker.startretries == 5
    assert worker.backoff == BackoffConfig(initial=0.1, max=30.0)
    assert worker.stopsignal == signal.SIGTERM
    assert worker.stoptimeout == 10.0
    assert worker.ready == ReadyConfig("none")
    assert worker.sockets == ()
    assert worker.depends_on == ()
    assert worker.stdout == LogConfig(file=None, maxbytes=50 * 1024 * 1024, backups=5)
    assert worker.stderr == LogConfig(file=None, maxbytes=50 * 1024 * 1024, backups=5)


def test_every_worker_key_is_read(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, """\
        sockets:
          api: {listen: "unix://run/api.sock", backlog: 64, mode: "0660"}
        workers:
          db:
            command: postgres -D 'my data'
          web:
            command: ["python3", "-m", "app"]
            numprocs: 3
            directory: srv
            environment: {A: "x", PORT: 8000, MODE: 0755, RATIO: 1.50}
            umask: 0o027
            autostart: false
            autorestart: on-failure
            exitcodes: 2
            startsecs: 500ms
            startretries: 0
            backoff: {initial: 1s, max: 2m}
            stopsignal: sigquit
            stoptimeout: 1.5
            ready: {tcp: 8000}
            sockets: [api]
            depends_on: [db]
            stdout: {file: out.log, maxbytes: 1KB, backups: 0}
            stderr: {maxbytes: 0, merge: true}
        """)
    assert loaded.workers["db"].command == ("postgres", "-D", "my data")
    web = loaded.workers["web"]
    assert web.command == ("python3", "-m", "app")
    assert web.instance_names() == ["web:0", "web:1", "web:2"]
    assert web.directory == str(tmp_path / "srv")
    assert web.environment == (("A", "x"), ("PORT", "8000"), ("MODE", "0755"), ("RATIO", "1.50"))
    assert web.umask == 0o027
    assert web.autostart is False
    assert web.autorestart == "on-failure"
    assert web.exitcodes == (2,)
    assert web.startsecs == 0.5
    assert web.startretries == 0
    assert web.backoff == BackoffConfig(initial=1.0, max=120.0)
    assert web.stopsignal == signal.SIGQUIT
    assert web.stoptimeout == 1.5
    assert web.ready == ReadyConfig("tcp", 8000)
    assert web.sockets == ("api",)
    assert web.depends_on == ("db",)
    assert web.stdout == LogConfig(file=str(tmp_path / "out.log"), maxbytes=1024, backups=0)
    assert web.stderr == LogConfig(file=None, maxbytes=0, backups=5, merge=True)
    socket = loaded.sockets["api"]
    assert socket.listen == f"unix://{tmp_path}/run/api.sock"
    assert (socket.backlog, socket.mode) == (64, 0o660)


def test_workers_keep_file_order(tmp_path: Path) -> None:
    text = "workers:\n" + "".join(f"  {name}: {{command: x}}\n" for name in "zamb")
    assert list(load_text(tmp_path, text).workers) == ["z", "a", "m", "b"]


@pytest.mark.parametrize(
    ("ready", "expected"),
    [("none", ReadyConfig("none")), ("notify", ReadyConfig("notify")),
     ("{tcp: 65535}", ReadyConfig("tcp", 65535))],
)
def test_ready_forms(tmp_path: Path, ready: str, expected: ReadyConfig) -> None:
    loaded = load_text(tmp_path, MINIMAL_WORKER + f"    ready: {ready}\n")
    assert loaded.workers["web"].ready == expected


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("tcp://127.0.0.1:8080", "tcp://127.0.0.1:8080"),
     ("tcp://[::1]:0", "tcp://[::1]:0"),
     ("tcp://localhost:65535", "tcp://localhost:65535"),
     ("unix:///tmp/x.sock", "unix:///tmp/x.sock")],
)
def test_listen_forms(tmp_path: Path, listen: str, expected: str) -> None:
    loaded = load_text(tmp_path, f"sockets:\n  s:\n    listen: '{listen}'\n")
    assert loaded.sockets["s"].listen == expected
    assert loaded.sockets["s"].backlog == 128
    assert loaded.sockets["s"].mode is None


def test_yaml_merge_keys_are_applied(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, """\
        workers:
          a: &base {command: x, numprocs: 2}
          b:
            <<: *base
            command: y
        """)
    assert loaded.workers["b"].command == ("y",)
    assert loaded.workers["b"].numprocs == 2


# ---------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.chdir("/")
    loaded = load_text(tmp_path, """\
        daemon:
          socket: ../sock/s.sock
          pidfile: /var/run/x.pid
          log_dir: ~/logs
          log_file: ./a/../b.log
        workers:
          w: {command: x, directory: sub/dir, stderr: {file: ~/e.log}}
        """)
    assert loaded.daemon.socket == str(tmp_path.parent / "sock" / "s.sock")
    assert loaded.daemon.pidfile == "/var/run/x.pid"
    assert loaded.daemon.log_dir == "/home/someone/logs"
    assert loaded.daemon.log_file == str(tmp_path / "b.log")
    assert loaded.workers["w"].directory == str(tmp_path / "sub" / "dir")
    assert loaded.workers["w"].stderr.file == "/home/someone/e.log"


def test_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    loaded = load("superd.yaml")
    assert loaded.path == str(tmp_path / "superd.yaml")
    assert loaded.daemon.socket == str(tmp_path / "run" / "superd.sock")


def test_loading_creates_no_folders(tmp_path: Path) -> None:
    load_text(tmp_path, MINIMAL_WORKER)
    assert sorted(os.listdir(tmp_path)) == ["superd.yaml"]


# ---------------------------------------------------------------- durations, sizes, signals


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5),
     ("2", 2.0), (" 7 ms ", 0.007), (0, 0.0), (2.25, 2.25), (10, 10.0), (".5s", 0.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["5 parsecs", "", "s", "1d", "-1s", -1, -0.5, True, None, [1], "1.2.3s", float("nan")]
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_milliseconds_round_trip(n: int) -> None:
    assert parse_duration(f"{n}ms") == n / 1000


@given(st.integers(min_value=0, max_value=10**9),
       st.sampled_from([("s", 1), ("m", 60), ("h", 3600)]))
def test_duration_whole_units_round_trip(n: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_duration(f"{n}{suffix}") == n * factor
    assert parse_duration(n) == n


@pytest.mark.parametrize(
    ("text", "size"),
    [("10KB", 10 * 1024), ("50MB", 50 * 1024**2), ("1GB", 1024**3), ("1GiB", 1024**3),
     ("3kib", 3 * 1024), ("2M", 2 * 1024**2), ("123", 123), ("123B", 123), (0, 0),
     (4096, 4096), ("1.5KB", 1536)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["10 parsecs", "", "KB", "-1KB", -1, 1.5, True, None, "1XB"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@given(st.integers(min_value=0, max_value=2**40),
       st.sampled_from([("KB", 1024), ("KiB", 1024), ("MB", 1024**2), ("MiB", 1024**2),
                        ("GB", 1024**3), ("GiB", 1024**3), ("", 1), ("B", 1)]))
def test_size_round_trip(n: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_size(f"{n}{suffix}") == n * factor


@pytest.mark.parametrize(
    ("value", "number"),
    [("TERM", signal.SIGTERM), ("SIGTERM", signal.SIGTERM), ("term", signal.SIGTERM),
     (15, 15), ("9", 9), ("hup", signal.SIGHUP), ("SIGUSR2", signal.SIGUSR2)],
)
def test_parse_signal(value: object, number: int) -> None:
    assert parse_signal(value) == number


@given(st.sampled_from(sorted(signal.Signals, key=int)))
def test_signal_names_round_trip(sig: signal.Signals) -> None:
    assert parse_signal(sig.name) == sig.value
    assert parse_signal(sig.name.removeprefix("SIG").lower()) == sig.value
    assert parse_signal(int(sig)) == sig.value


@pytest.mark.parametrize("bad", ["NOPE", "SIGNOPE", "", 0, -1, 1000, True, None, 1.5])
def test_parse_signal_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_signal(bad)


# ---------------------------------------------------------------- names


def test_instance_names(tmp_path: Path) -> None:
    text = "workers:\n  one: {command: x}\n  two: {command: x, numprocs: 2}\n"
    loaded = load_text(tmp_path, text)
    assert loaded.workers["one"].instance_names() == ["one"]
    assert loaded.workers["two"].instance_names() == ["two:0", "two:1"]


@pytest.mark.parametrize(
    ("instance", "name"), [("web", "web"), ("web:0", "web_0"), ("a.b-c:12", "a.b-c_12")]
)
def test_log_name(instance: str, name: str) -> None:
    assert log_name(instance) == name


# ---------------------------------------------------------------- error reports


def test_issue_format(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_WORKER + "    startsecs: 5 parsecs\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    expected = f"{path}:4: workers.web.startsecs: not a duration: '5 parsecs'"
    assert str(caught.value) == expected
    assert caught.value.issues == [
        ConfigIssue(path, 4, "workers.web.startsecs", "not a duration: '5 parsecs'")
    ]


def test_every_error_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = """\
        daemon:
          shutdown_timeout: -3s
          socket_mode: rw
        sockets:
          web: {listen: "tcp://127.0.0.1:70000", backlog: 0}
        workers:
          web:
            command: []
            numprocs: 0
            umask: "9"
            autostart: "yes please"
            autorestart: false
            exitcodes: [0, 256, x]
            startretries: -1
            stopsignal: NOPE
            stoptimeout: soon
            backoff: {initial: 5s, max: 1s}
            ready: {tcp: 0}
            stdout: {maxbytes: 10 parsecs, backups: -2}
            stderr: {merge: 1}
            environment: {A: null, B: [1], C: true}
        """
    assert keyed(tmp_path, text) == [
        (2, "daemon.shutdown_timeout"),
        (3, "daemon.socket_mode"),
        (5, "sockets.web.listen"),
        (5, "sockets.web.backlog"),
        (8, "workers.web.command"),
        (9, "workers.web.numprocs"),
        (10, "workers.web.umask"),
        (11, "workers.web.autostart"),
        (12, "workers.web.autorestart"),
        (13, "workers.web.exitcodes[1]"),
        (13, "workers.web.exitcodes[2]"),
        (14, "workers.web.startretries"),
        (15, "workers.web.stopsignal"),
        (16, "workers.web.stoptimeout"),
        (17, "workers.web.backoff.max"),
        (18, "workers.web.ready.tcp"),
        (19, "workers.web.stdout.maxbytes"),
        (19, "workers.web.stdout.backups"),
        (20, "workers.web.stderr.merge"),
        (21, "workers.web.environment.A"),
        (21, "workers.web.environment.B"),
        (21, "workers.web.environment.C"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [("numprocs: abc", "expected an integer, got 'abc'"),
     ("numprocs: 1.5", "expected an integer, got 1.5"),
     ("numprocs: 10001", "must be at most 10000, got 10001"),
     ("autostart: 'true'", "expected true or false, got 'true'"),
     ("autorestart: true", "expected one of always, on-failure, never, got true"),
     ("startsecs: -1", "duration must not be negative, got -1"),
     ("exitcodes: {a: 1}", "expected a list, got a mapping"),
     ("stopsignal: NOPE", "unknown signal: 'NOPE'"),
     ("user: no-such-user-for-superd-tests", "no such user: 'no-such-user-for-superd-tests'"),
     ("ready: sometimes", "expected none, notify or {tcp: PORT}, got 'sometimes'"),
     ("startretries: sometimes", "expected a number of retries or forever, got 'sometimes'"),
     ("startretries: -1", "must be at least 0, got -1"),
     ("startretries: true", "expected a number of retries or forever, got true"),
     ("start_timeout: -1", "duration must not be negative, got -1"),
     ("stdout: 5", "expected a mapping, got 5"),
     ("sockets: [nope]", "unknown socket 'nope'"),
     ("depends_on: [ghost]", "unknown worker 'ghost'")],
)
def test_messages_say_what_was_expected(tmp_path: Path, line: str, message: str) -> None:
    [(number, _, reported)] = issues(tmp_path, MINIMAL_WORKER + f"    {line}\n")
    assert (number, reported) == (4, message)


def test_numprocs_up_to_the_maximum_is_fine(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, MINIMAL_WORKER + f"    numprocs: {config.MAX_NUMPROCS}\n")
    assert loaded.workers["web"].instance_names()[-1] == "web:9999"


@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be at least 1, got 0"), ("many", "expected an integer, got 'many'")])
def test_max_connections_must_be_a_positive_integer(tmp_path: Path, value: str,
                                                    message: str) -> None:
    assert load_text(tmp_path, "daemon:\n  max_connections: 3\n").daemon.max_connections == 3
    [reported] = issues(tmp_path, f"daemon:\n  max_connections: {value}\n")
    assert reported == (2, "daemon.max_connections", message)


def test_unknown_keys_are_reported_at_their_own_line(tmp_path: Path) -> None:
    text = """\
        daemon:
          socket: x.sock
          sockett: y.sock
        colour: blue
        workers:
          web:
            command: x
            startsec: 1
            stdout:
              file: null
              merge: true
        """
    found = issues(tmp_path, text)
    assert [(line, key) for line, key, _ in found] == [
        (3, "daemon.sockett"),
        (4, "colour"),
        (8, "workers.web.startsec"),
        (11, "workers.web.stdout.merge"),
    ]
    assert found[0][2] == "unknown key (did you mean 'socket'?)"
    assert found[2][2] == "unknown key (did you mean 'startsecs'?)"


def test_missing_required_key_is_reported_at_the_mapping(tmp_path: Path) -> None:
    text = """\
        sockets:
          s: {backlog: 5}
        workers:
          web: {numprocs: 2}
        """
    assert issues(tmp_path, text) == [
        (2, "sockets.s.listen", "required key is missing"),
        (4, "workers.web.command", "required key is missing"),
    ]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    text = MINIMAL_WORKER + "    numprocs: 1\n    numprocs: 2\n"
    assert issues(tmp_path, text) == [
        (5, "workers.web.numprocs", "duplicate key (first at line 4)")
    ]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    [(line, key, message)] = issues(tmp_path, text)
    assert (line, key) == (1, "-")
    assert message.startswith("expected a mapping")


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    text = "workers:\n  web:\n    command: [a, b\n    numprocs: 2\n  other: {\n"
    assert issues(tmp_path, text) == [
        (4, "-", "invalid YAML: while parsing a flow sequence, expected ',' or ']', but got ':'")
    ]


def test_several_documents_are_an_error(tmp_path: Path) -> None:
    assert issues(tmp_path, "workers: {}\n---\nworkers: {}\n") == [
        (2, "-", "invalid YAML: expected a single document in the stream, "
                 "but found another document")
    ]


def test_bad_indentation_reports_its_line(tmp_path: Path) -> None:
    [(line, _, message)] = issues(tmp_path, "workers:\n  web:\n    command: x\n   bad: 1\n")
    assert line == 4
    assert message.startswith("invalid YAML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as caught:
        load(path)
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.key) == (path, 0, "-")
    assert issue.message == "cannot read: No such file or directory"
    assert str(issue).startswith(f"{path}:0: -: cannot read")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path))
    assert caught.value.issues[0].message.startswith("cannot read: ")


def test_non_utf8_file_is_an_issue_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "superd.yaml"
    path.write_bytes(b"workers:\n  web: {command: \xff\xfe}\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert caught.value.issues[0].message.startswith("invalid YAML")


def test_bad_yaml_tag_is_an_issue(tmp_path: Path) -> None:
    [(line, key, message)] = issues(tmp_path, MINIMAL_WORKER + "    numprocs: !!python/int 3\n")
    assert (line, key) == (4, "workers.web.numprocs")
    assert message.startswith("bad value")


@pytest.mark.parametrize("name", ["web:0", "a b", "x/y", "'"])
def test_bad_worker_names(tmp_path: Path, name: str) -> None:
    found = issues(tmp_path, f'workers:\n  x: {{command: y}}\n  "{name}": {{command: y}}\n')
    assert found == [
        (3, f"workers.{name}", "bad worker name: use only letters, digits, '_', '.' and '-'")
    ]


def test_command_errors(tmp_path: Path) -> None:
    text = """\
        workers:
          a: {command: ""}
          b: {command: "python3 'unterminated"}
          c:
            command:
              - prog
              - null
          d: {command: 5}
        """
    assert issues(tmp_path, text) == [
        (2, "workers.a.command", "command is empty"),
        (3, "workers.b.command", "cannot split command: No closing quotation"),
        (7, "workers.c.command[1]", "expected a string, got null"),
        (8, "workers.d.command", "expected a list of strings or a string, got 5"),
    ]


def test_command_string_is_split_not_shelled(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, """workers:\n  w: {command: "echo 'a b' $HOME | wc"}\n""")
    assert loaded.workers["w"].command == ("echo", "a b", "$HOME", "|", "wc")


@pytest.mark.parametrize(
    ("listen", "message"),
    [("tcp://127.0.0.1:65536", "port out of range 0..65535: 65536"),
     ("tcp://127.0.0.1", "expected tcp://HOST:PORT or tcp://[IPV6]:PORT, got 'tcp://127.0.0.1'"),
     ("tcp://[nothex]:80", "not an IPv6 address: [nothex]"),
     ("http://x:80", "expected tcp://HOST:PORT or unix:///PATH, got 'http://x:80'"),
     ("unix://", "expected a path, got ''")],
)
def test_bad_listen_addresses(tmp_path: Path, listen: str, message: str) -> None:
    assert issues(tmp_path, f"sockets:\n  s:\n    listen: '{listen}'\n") == [
        (3, "sockets.s.listen", message)
    ]


def test_socket_mode_only_for_unix_sockets(tmp_path: Path) -> None:
    text = "sockets:\n  s:\n    listen: tcp://127.0.0.1:1\n    mode: '0600'\n"
    assert issues(tmp_path, text) == [
        (4, "sockets.s.mode", "mode applies only to unix:// sockets")
    ]


def test_overlong_unix_socket_path(tmp_path: Path) -> None:
    text = f"daemon:\n  socket: /{'x' * 120}.sock\n"
    [(line, key, message)] = issues(tmp_path, text)
    assert (line, key) == (2, "daemon.socket")
    assert message.startswith("socket path too long (126 bytes, at most 107)")


@pytest.mark.parametrize(("mode", "value"), [("'0640'", 0o640), ("'640'", 0o640),
                                             ("0o640", 0o640), ("0640", 0o640), ("416", 0o640)])
def test_socket_mode_forms(tmp_path: Path, mode: str, value: int) -> None:
    assert load_text(tmp_path, f"daemon:\n  socket_mode: {mode}\n").daemon.socket_mode == value


def test_socket_group_must_exist(tmp_path: Path) -> None:
    text = "daemon:\n  socket_group: no-such-group-for-superd-tests\n"
    assert issues(tmp_path, text) == [
        (2, "daemon.socket_group", "no such group: 'no-such-group-for-superd-tests'")
    ]


def test_existing_user_and_group_are_accepted(tmp_path: Path) -> None:
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    loaded = load_text(tmp_path, f"daemon:\n  socket_group: {group}\n"
                                 + MINIMAL_WORKER + f"    user: {user}\n")
    assert loaded.daemon.socket_group == group
    assert loaded.workers["web"].user == user


# ---------------------------------------------------------------- dependencies


def test_unknown_dependencies_and_sockets_are_reported_per_item(tmp_path: Path) -> None:
    text = """\
        sockets:
          web: {listen: "tcp://127.0.0.1:8080"}
        workers:
          db: {command: x}
          web:
            command: x
            sockets:
              - web
              - admin
            depends_on:
              - db
              - cache
        """
    assert issues(tmp_path, text) == [
        (9, "workers.web.sockets[1]", "unknown socket 'admin'"),
        (12, "workers.web.depends_on[1]", "unknown worker 'cache'"),
    ]


def test_dependency_cycle_is_named(tmp_path: Path) -> None:
    text = """\
        workers:
          a:
            command: x
            depends_on: [b]
          b:
            command: x
            depends_on: [c]
          c:
            command: x
            depends_on: [a]
          d:
            command: x
            depends_on: [a]
        """
    assert issues(tmp_path, text) == [
        (4, "workers.a.depends_on", "dependency cycle: a -> b -> c -> a")
    ]


def test_self_dependency_is_a_cycle(tmp_path: Path) -> None:
    text = "workers:\n  solo:\n    command: x\n    depends_on: solo\n"
    assert issues(tmp_path, text) == [
        (4, "workers.solo.depends_on", "dependency cycle: solo -> solo")
    ]


def test_acyclic_diamond_is_fine(tmp_path: Path) -> None:
    text = """\
        workers:
          top: {command: x, depends_on: [left, right]}
          left: {command: x, depends_on: [base]}
          right: {command: x, depends_on: [base]}
          base: {command: x}
        """
    assert load_text(tmp_path, text).workers["top"].depends_on == ("left", "right")


def test_long_dependency_chain_does_not_recurse(tmp_path: Path) -> None:
    count = 3000
    lines = [f"  w{i}: {{command: x, depends_on: [w{i + 1}]}}\n" for i in range(count)]
    lines.append(f"  w{count}: {{command: x, depends_on: [w0]}}\n")
    [(line, key, message)] = issues(tmp_path, "workers:\n" + "".join(lines))
    assert (line, key) == (2, "workers.w0.depends_on")
    assert message.endswith(f"w{count} -> w0")


# ---------------------------------------------------------------- find_path


def test_find_path_prefers_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERD_CONFIG", "/from/env.yaml")
    assert find_path("/from/cli.yaml") == "/from/cli.yaml"


def test_find_path_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERD_CONFIG", "/from/env.yaml")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert find_path(None) == "/from/env.yaml"


def test_find_path_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/xdg")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert find_path(None) == "/etc/superd/superd.yaml"


def test_find_path_for_users_uses_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/xdg")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert find_path(None) == "/xdg/superd/superd.yaml"


@pytest.mark.parametrize("xdg", [None, ""])
def test_find_path_for_users_falls_back_to_dot_config(
    monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    monkeypatch.delenv("SUPERD_CONFIG", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert find_path(None) == "/home/u/.config/superd/superd.yaml"


# ---------------------------------------------------------------- the reference config


def test_reference_config_loads_cleanly() -> None:
    loaded = load(str(REFERENCE_CONFIG))
    assert list(loaded.sockets) == ["web"]
    assert loaded.sockets["web"].listen == "tcp://127.0.0.1:8080"
    web = loaded.workers["web"]
    assert web.sockets == ("web",)
    assert web.user is None
    assert web.command == ("python3", "-m", "http.server", "${PORT:-8000}")  # per instance
    assert loaded.daemon.socket == str(REFERENCE_CONFIG.parent / "run" / "superd.sock")


def test_reference_config_shows_every_key() -> None:
    text = REFERENCE_CONFIG.read_text()
    every_key = {
        *config.TOP_KEYS, *config.DAEMON_KEYS, *config.SOCKET_KEYS, *config.WORKER_KEYS,
        *config.BACKOFF_KEYS, *config.STDERR_KEYS, "tcp",
    }
    missing = sorted(key for key in every_key if f"{key}:" not in text)
    assert missing == []


def test_reference_config_has_the_documented_defaults(tmp_path: Path) -> None:
    reference = tmp_path / "reference.yaml"
    reference.write_text(REFERENCE_CONFIG.read_text())
    loaded = load(str(reference))
    defaults = load_text(tmp_path, "workers:\n  web: {command: x}\n")
    assert loaded.daemon == defaults.daemon
    web, plain = loaded.workers["web"], defaults.workers["web"]
    different = {
        name for name in web.__dataclass_fields__ if getattr(web, name) != getattr(plain, name)
    }
    assert different == {"command", "environment", "sockets"}


def test_merged_keys_are_checked_where_they_are_used(tmp_path: Path) -> None:
    text = """\
        workers:
          a: &base {command: x, bogus: 1}
          b: {<<: *base, command: y, command: z}
        """
    assert keyed(tmp_path, text) == [
        (2, "workers.a.bogus"),
        (2, "workers.b.bogus"),
        (3, "workers.b.command"),
    ]


def test_startretries_forever_and_start_timeout(tmp_path: Path) -> None:
    default = load_text(tmp_path, "workers:\n  web: {command: x}\n").workers["web"]
    assert default.start_timeout == 90.0
    text = "workers:\n  web: {command: x, startretries: forever, start_timeout: 500ms}\n"
    web = load_text(tmp_path, text).workers["web"]
    assert web.startretries == math.inf and web.start_timeout == 0.5


@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, places=4),
       st.sampled_from(["", "ms", "s", "m", "h"]), st.sampled_from(["", "k", "MB", "GiB"]))
def test_durations_and_sizes_are_exact(number: Any, duration_unit: str, size_unit: str) -> None:
    from fractions import Fraction

    text = format(number, "f")
    seconds = {"": 1, "ms": Fraction(1, 1000), "s": 1, "m": 60, "h": 3600}[duration_unit]
    assert config.parse_duration(text + duration_unit) == float(Fraction(text) * seconds)
    size = {"": 1, "k": 1024, "MB": 1024**2, "GiB": 1024**3}[size_unit]
    assert config.parse_size(text + size_unit) == int(Fraction(text) * size)


def test_groups_name_several_workers(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, """
        workers:
          web: {command: "sleep 1"}
          api: {command: "sleep 1", numprocs: 2}
        groups:
          app: [web, api]
          solo: web
    """)
    assert loaded.groups == {"app": ("web", "api"), "solo": ("web",)}


def test_a_group_names_known_workers_and_takes_no_workers_name(tmp_path: Path) -> None:
    found = keyed(tmp_path, """
        workers:
          web: {command: "sleep 1"}
          api: {command: "sleep 1", numprocs: 2}
        groups:
          app: [web, nope]
          web: [api]
          "api:1": [web]
          all: [web]
          "bad name": [web]
    """)
    assert (6, "groups.app[1]") in found
    assert (7, "groups.web") in found and (8, "groups.api:1") in found
    assert (9, "groups.all") in found and (10, "groups.bad name") in found


def test_an_undefined_variable_is_an_error_at_its_line(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERD_TEST_DEFINED", "x")
    monkeypatch.delenv("SUPERD_TEST_NOPE", raising=False)
    found = issues(tmp_path, """
        workers:
          web:
            command: ["serve", "${SUPERD_TEST_DEFINED}", "${SUPERD_TEST_NOPE}"]
            directory: "/srv/${SUPERD_TEST_NOPE:-default}"
            environment:
              A: "${B}"
              B: "b"
              C: "${B}${SUPERD_INSTANCE}$$"
            stdout: {file: "log/${SUPERD_TEST_NOPE}.log"}
    """)
    assert [(line, key) for line, key, _ in found] == [
        (4, "workers.web.command[2]"), (7, "workers.web.environment.A"),
        (10, "workers.web.stdout.file")]
    assert "undefined variable ${SUPERD_TEST_NOPE}" in found[0][2]


def test_env_files_are_read_with_quotes_comments_and_export(tmp_path: Path) -> None:
    (tmp_path / "one.env").write_text(
        "# a comment\nexport A=1\nB = two words # trailing comment\n"
        "C='single # not a comment'\nD=\"double\"\n\nE=\n")
    (tmp_path / "two.env").write_text("A=2\n")
    loaded = load_text(tmp_path, """
        workers:
          web:
            command: "run ${A} ${E:-empty}"
            env_file: [one.env, two.env, -missing.env]
    """)
    web = loaded.workers["web"]
    assert web.env_file == ("one.env", "two.env", "-missing.env")
    assert dict(web.env_file_vars) == {"A": "2", "B": "two words",
                                       "C": "single # not a comment", "D": "double", "E": ""}


def test_a_missing_or_bad_env_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("A=1\nthis is not a setting\n")
    found = issues(tmp_path, """
        workers:
          web:
            command: "run"
            env_file: [missing.env, bad.env]
    """)
    assert [(line, key) for line, key, _ in found] == [(5, "workers.web.env_file")] * 2
    assert "no such file (write -missing.env if it may be missing)" in found[0][2]
    assert "line 2: expected KEY=VALUE" in found[1][2]


def test_expansion_per_instance() -> None:
    from superd.expand import expand

    values = {"A": "a", "EMPTY": ""}
    assert expand("${A}-${EMPTY:-d}-${NOPE:-x}-$$-$A-${A:-z}", values) == "a-d-x-$-$A-a"


def test_included_files_add_workers_sockets_and_groups(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.yaml").write_text(
        "workers:\n  b: {command: run, directory: here}\ngroups:\n  both: [a, b]\n")
    (tmp_path / "conf.d" / "a.yaml").write_text(
        "sockets:\n  s: {listen: 'tcp://127.0.0.1:8999'}\nworkers:\n  a: {command: run}\n")
    (tmp_path / "conf.d" / "skip.txt").write_text("not: yaml: at all")
    loaded = load_text(tmp_path, """
        include: [conf.d/*.yaml]
        workers:
          main: {command: run}
    """)
    assert list(loaded.workers) == ["main", "a", "b"]  # the main file, then sorted includes
    assert loaded.workers["b"].directory == str(tmp_path / "conf.d" / "here")
    assert set(loaded.sockets) == {"s"} and loaded.groups == {"both": ("a", "b")}
    assert list(loaded.sources) == [str(tmp_path / "superd.yaml"),
                                    str(tmp_path / "conf.d" / "a.yaml"),
                                    str(tmp_path / "conf.d" / "b.yaml")]


def test_an_included_file_reports_its_own_name_and_lines(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(
        "workers:\n  main: {command: run}\n  bad: {commnd: run}\ndaemon: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, """
            include: extra.yaml
            workers:
              main: {command: run}
        """)
    found = [(Path(i.file).name, i.line, i.key, i.message) for i in caught.value.issues]
    extra = [entry for entry in found if entry[0] == "extra.yaml"]
    assert ("extra.yaml", 2, "workers.main",
            f"defined twice (first at {tmp_path / 'superd.yaml'}:4)") in extra
    assert any(e[1:3] == (3, "workers.bad.commnd") for e in extra)
    assert any(e[1:3] == (4, "daemon") for e in extra)


def test_a_carried_config_is_not_read_again(tmp_path: Path) -> None:
    main = write(tmp_path, "include: [more/*.yaml]\nworkers: {a: {command: run}}\n")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "b.yaml").write_text("workers: {b: {command: run}}\n")
    first = load(main)
    (tmp_path / "more" / "b.yaml").write_text("workers: {changed: {command: run}}\n")
    (tmp_path / "more" / "c.yaml").write_text("workers: {c: {command: run}}\n")
    again = load(main, first.sources)  # as a re-exec loads it
    assert list(again.workers) == ["a", "b"]
    assert list(load(main).workers) == ["a", "changed", "c"]  # as a reload does
