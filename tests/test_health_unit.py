"""Healthchecks at their edges: the config they are read from, the HTTP
status line, and the schedule and verdicts of a watch on a fake loop."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from superd.config import ConfigError, HealthConfig, load
from superd.health import HealthChecks
from superd.probes import http_verdict, split_url
from superd.states import Event, State


def workers(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "superd.yaml"
    path.write_text(textwrap.dedent(text))
    return load(str(path)).workers


def errors(tmp_path: Path, text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as caught:
        workers(tmp_path, text)
    return [(issue.line, issue.key, issue.message) for issue in caught.value.issues]


def test_each_probe_is_read_with_its_defaults(tmp_path: Path) -> None:
    read = workers(tmp_path, """
        workers:
          a: {command: x, healthcheck: {tcp: 8080}}
          b: {command: x, healthcheck: {http: "http://localhost:81/up?full=1", retries: 1,
                                        interval: 2s, timeout: 500ms, start_period: 1m}}
          c: {command: x, healthcheck: {exec: "check --quick"}}
          d: {command: x, environment: {PORT: "1"}, healthcheck: {tcp: "${PORT}"}}
          e: {command: x, healthcheck: null}
        """)
    assert read["a"].healthcheck == HealthConfig("tcp", "8080", (), 10.0, 5.0, 3, 0.0)
    assert read["b"].healthcheck == HealthConfig("http", "http://localhost:81/up?full=1", (),
                                                 2.0, 0.5, 1, 60.0)
    assert read["c"].healthcheck == HealthConfig("exec", "", ("check", "--quick"))
    assert read["d"].healthcheck.target == "${PORT}"
    assert read["e"].healthcheck is None


def test_a_bad_healthcheck_is_named_with_its_line(tmp_path: Path) -> None:
    found = errors(tmp_path, """
        workers:
          a: {command: x, healthcheck: {tcp: 1, exec: [y]}}
          b: {command: x, healthcheck: {interval: 1s}}
          c: {command: x, healthcheck: {http: "https://127.0.0.1/"}}
          d: {command: x, healthcheck: {http: "http://example.com/"}}
          e: {command: x, healthcheck: {tcp: 70000}}
          f: {command: x, healthcheck: {tcp: 1, retries: 0, interval: 0}}
          g: {command: x, healthcheck: {tcp: "${NOWHERE_SET}"}}
          h: {command: x, healthcheck: {tcp: 1, every: 1s}}
        """)
    assert [(line, key) for line, key, _ in found] == [
        (3, "workers.a.healthcheck"), (4, "workers.b.healthcheck"),
        (5, "workers.c.healthcheck.http"), (6, "workers.d.healthcheck.http"),
        (7, "workers.e.healthcheck.tcp"), (8, "workers.f.healthcheck.interval"),
        (8, "workers.f.healthcheck.retries"), (9, "workers.g.healthcheck.tcp"),
        (10, "workers.h.healthcheck.every")]
    messages = dict(((line, key), message) for line, key, message in found)
    assert messages[(3, "workers.a.healthcheck")] == "name one probe, not tcp and exec"
    assert "no https, no host names" in messages[(5, "workers.c.healthcheck.http")]
    assert "undefined variable ${NOWHERE_SET}" in messages[(9, "workers.g.healthcheck.tcp")]


def test_a_url_is_split_into_what_the_probe_sends() -> None:
    assert split_url("http://127.0.0.1:8000/health?x=1") == \
        ("127.0.0.1", 8000, "/health?x=1", "127.0.0.1:8000")
    assert split_url("http://localhost") == ("127.0.0.1", 80, "/", "localhost")
    assert split_url("http://[::1]:9/") == ("::1", 9, "/", "[::1]:9")
    for bad in ("http://999.1.1.1/", "ftp://127.0.0.1/", "http://127.0.0.1:0/",
                "http://[zz::1]/"):
        with pytest.raises(ValueError):
            split_url(bad)


@pytest.mark.parametrize(("head", "verdict"), [
    (b"HTTP/1.1 200 OK\r\n", (True, "HTTP 200")),
    (b"HTTP/1.0 302 Found\r\nLocation: /", (True, "HTTP 302")),
    (b"HTTP/1.1 204\r\n", (True, "HTTP 204")),
    (b"HTTP/1.1 404 Not Found\r\n", (False, "HTTP 404")),
    (b"HTTP/1.1 503 ", (False, "HTTP 503")),
    (b"HTTP/1.1 20", None),
    (b"HTT", None),
    (b"SSH-2.0-OpenSSH\r\n", (False, "not an HTTP/1.x status line")),
    (b"HTTP/1.1 200OK\r\n", (False, "not an HTTP/1.x status line")),
    (b"HTTP/1.1 " + b"2" * 5000, (False, "not an HTTP/1.x status line")),
])
def test_only_the_status_line_decides(head: bytes, verdict: tuple[bool, str] | None) -> None:
    assert http_verdict(head) == verdict


class FakeTimer:
    def __init__(self, loop: FakeLoop, at: float, callback: Any) -> None:
        self.loop, self.at, self.callback, self.cancelled = loop, at, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Any) -> FakeTimer:
        timer = FakeTimer(self, self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[float]:
        return sorted(t.at for t in self.timers if not t.cancelled)

    def advance(self) -> None:
        """Run the next timer."""
        timer = min((t for t in self.timers if not t.cancelled), key=lambda t: t.at)
        self.now = timer.at
        timer.cancelled = True
        timer.callback()


class Answers:
    """A probe maker whose probes answer at once, from a script."""

    def __init__(self, verdicts: list[bool | None]) -> None:
        self.verdicts = verdicts
        self.started = 0

    def probe(self, instance: Any, health: HealthConfig, done: Any) -> Any:
        answers = self

        class Probe:
            def start(self) -> None:
                answers.started += 1
                verdict = answers.verdicts.pop(0)
                if verdict is not ...:
                    done(verdict, "scripted")

            def cancel(self) -> None:
                pass

        return Probe()


class FakeInstance:
    def __init__(self, health: HealthConfig) -> None:
        self.name = "w"
        self.config = type("Config", (), {"healthcheck": health})()
        self.state = State.RUNNING
        self.health: str | None = "starting"
        self.events: list[Event] = []

    def set_health(self, health: str | None) -> None:
        self.health = health

    def handle(self, event: Event) -> None:
        self.events.append(event)


def watched(verdicts: list[Any], **keys: Any) -> tuple[FakeLoop, FakeInstance, list[Any]]:
    loop, changes = FakeLoop(), []
    instance = FakeInstance(HealthConfig("tcp", "1", **{"interval": 10.0, "timeout": 2.0,
                                                        "retries": 3, **keys}))
    checks = HealthChecks(loop, Answers(verdicts),  # type: ignore[arg-type]
                          lambda i, old, new, message: changes.append((loop.now, old, new)))
    checks.running(instance)  # type: ignore[arg-type]
    return loop, instance, changes


def test_retries_failures_in_a_row_restart_and_a_success_clears_them() -> None:
    loop, instance, changes = watched([True, False, False, True, False, False, False],
                                      start_period=5.0)
    assert loop.pending() == [15.0]  # start_period, then one interval
    for _ in range(7):
        loop.advance()
    assert changes == [(15.0, "starting", "healthy"), (75.0, "healthy", "unhealthy")]
    assert instance.events == [Event.RESTART]


def test_a_probe_that_overruns_is_a_failure_and_no_verdict_is_not_counted() -> None:
    loop, instance, changes = watched([..., None, None, False, False], retries=2)
    loop.advance()  # the probe starts at 10 and never answers
    assert loop.pending() == [12.0]  # its deadline: the only timer
    loop.advance()
    assert loop.pending() == [22.0]  # one interval after it ended
    for _ in range(3):
        loop.advance()
    # The overrun at 10 is one failure, the Nones at 22 and 32 count nothing, 42 is two.
    assert changes == [(42.0, "starting", "unhealthy")]
