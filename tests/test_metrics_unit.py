"""The pure parts of the metrics: the text format, the HTTP answers, the
hand-over of the metrics socket and the CPU counter's reading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from superd.handover import kept_fds
from superd.loop import Loop
from superd.metrics import FAMILIES, MetricsReport, escape_help, escape_label, number
from superd.metricsserver import (
    MAX_HEAD,
    MetricsEndpoint,
    MetricsServer,
    answer_status,
    bind_metrics,
    response,
)
from superd.resources import CLOCK_TICKS, ProcFiles, ResourceSampler, parse_stat
from superd.states import Event, State
from superd.worker import Instance
from test_states import FakeRuntime, make_worker


class NoDrops:
    def dropped_by_instance(self) -> dict[str, int]:
        return {"web:1": 42}


class Fixed:
    """The registry as MetricsReport asks it."""

    def __init__(self, instances: list[Instance]) -> None:
        self.listed = instances

    def instances(self) -> list[Instance]:
        return self.listed


class FakeSampler(ResourceSampler):
    def measure(self, pids: dict[str, int]) -> dict[str, tuple[float | None, int | None]]:
        return {name: (1.0, 4096 * pid) for name, pid in pids.items()}

    def cpu_seconds(self, name: str, pid: int) -> float | None:
        return pid / 4


Labels = frozenset[tuple[str, str]]


def families_of(text: str) -> dict[str, tuple[str, dict[Labels, float]]]:
    """family name -> (type, {labels: value})."""
    return {family.name: (family.type, {frozenset(s.labels.items()): s.value
                                        for s in family.samples})
            for family in text_string_to_metric_families(text)}


def labelled(name: str, **more: str) -> Labels:
    return frozenset({"name": name, "worker": name.partition(":")[0], **more}.items())


@pytest.mark.parametrize("value", ['plain', 'back\\slash', 'say "hi"', 'two\nlines',
                                   '\\"\n\\n', 'ünïcode'])
def test_label_values_are_escaped_as_the_parser_reads_them(value: str) -> None:
    text = f'x{{v="{escape_label(value)}"}} 1\n'
    [family] = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"v": value}


def test_help_texts_are_escaped_as_the_parser_reads_them() -> None:
    help_text = escape_help("a \\ b\nc")
    text = f"# HELP x {help_text}\n# TYPE x gauge\nx 1\n"
    [family] = text_string_to_metric_families(text)
    assert family.documentation == "a \\ b\nc"


def test_numbers() -> None:
    assert [number(3), number(3.0), number(0.25), number(12.5)] == ["3", "3", "0.25", "12.5"]


def test_counters_end_in_total_and_help_is_one_line() -> None:
    for family in FAMILIES:
        assert family.name.endswith("_total") == (family.kind == "counter"), family.name
        assert "\n" not in family.help


def instances(tmp_path: Path) -> list[Instance]:
    runtime = FakeRuntime()
    web = make_worker(tmp_path, name="web", numprocs=2, startsecs=0)
    off = make_worker(tmp_path, name="off", startsecs=0)
    found = [Instance(web, 0, runtime), Instance(web, 1, runtime), Instance(off, 0, runtime)]
    found[0].handle(Event.START)
    found[1].handle(Event.START)
    return found


def test_the_text_of_running_and_stopped_instances(tmp_path: Path) -> None:
    web0, web1, off = instances(tmp_path)
    report = MetricsReport(Fixed([web0, web1, off]), NoDrops(), FakeSampler())  # type: ignore[arg-type]
    before = time.time()
    text = report.text()
    assert text.endswith("\n")
    headers = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert headers == [family.name for family in FAMILIES]  # each family once, in order
    found = families_of(text)
    labels = {name: labelled(name) for name in ("web:0", "web:1", "off")}
    assert found["superd_instance_up"] == ("gauge", {labels["web:0"]: 1, labels["web:1"]: 1,
                                                     labels["off"]: 0})
    states = found["superd_instance_state"][1]
    assert len(states) == 3 * len(State)
    assert {key for key, value in states.items() if value == 1} == {
        labelled("web:0", state="RUNNING"), labelled("web:1", state="RUNNING"),
        labelled("off", state="STOPPED")}
    # The parser names a counter family without its _total; the samples keep it.
    assert found["superd_instance_log_dropped_bytes"] == (
        "counter", {labels["web:0"]: 0, labels["web:1"]: 42, labels["off"]: 0})
    assert found["superd_instance_cpu_seconds"] == (
        "counter", {labels["web:0"]: web0.pid / 4, labels["web:1"]: web1.pid / 4})
    assert found["superd_instance_rss_bytes"][1] == {labels["web:0"]: 4096 * (web0.pid or 0),
                                                     labels["web:1"]: 4096 * (web1.pid or 0)}
    starts = found["superd_instance_start_time_seconds"][1]
    assert set(starts) == {labels["web:0"], labels["web:1"]}
    assert all(before - 1 <= start <= time.time() for start in starts.values())
    assert found["superd_instance_healthy"] == ("gauge", {})  # no healthcheck, no sample


def test_healthy_only_for_instances_with_a_healthcheck(tmp_path: Path) -> None:
    web0, web1, off = instances(tmp_path)
    web0.set_health("healthy")
    web1.set_health("unhealthy")
    off.set_health("starting")
    report = MetricsReport(Fixed([web0, web1, off]), NoDrops(), FakeSampler())  # type: ignore[arg-type]
    healthy = families_of(report.text())["superd_instance_healthy"][1]
    assert {dict(key)["name"]: value for key, value in healthy.items()} == {
        "web:0": 1, "web:1": 0, "off": 0}
    web1.set_health(None)
    healthy = families_of(report.text())["superd_instance_healthy"][1]
    assert {dict(key)["name"] for key in healthy} == {"web:0", "off"}


def test_a_state_change_shows_in_the_next_text(tmp_path: Path) -> None:
    web0, web1, off = instances(tmp_path)
    report = MetricsReport(Fixed([web0]), NoDrops(), FakeSampler())  # type: ignore[arg-type]
    assert 'state="RUNNING"} 1' in report.text()
    web0.handle(Event.STOP)
    text = report.text()
    assert 'state="STOPPING"} 1' in text and 'state="RUNNING"} 0' in text


# --- the HTTP answers ---------------------------------------------------------------

@pytest.mark.parametrize(("head", "status", "head_only"), [
    (b"GET /metrics HTTP/1.1\r\nHost: x", 200, False),
    (b"GET /metrics HTTP/1.0", 200, False),
    (b"GET /metrics?name[]=web HTTP/1.1\r\nAccept: */*", 200, False),
    (b"HEAD /metrics HTTP/1.1\r\nHost: x", 200, True),
    (b"GET /metrics HTTP/1.1\nHost: x", 200, False),
    (b"GET / HTTP/1.1", 404, False),
    (b"GET /metrics/ HTTP/1.1", 404, False),
    (b"GET /metricsx HTTP/1.1", 404, False),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0", 405, False),
    (b"DELETE /x HTTP/1.1", 405, False),
    (b"GET /metrics", 400, False),
    (b"GET /metrics HTTP/2.0", 400, False),
    (b"get /metrics HTTP/1.1", 400, False),
    (b"GET  /metrics HTTP/1.1", 400, False),
    (b"GET /metrics HTTP/1.1\r\nno colon here", 400, False),
    (b"GET /metrics HTTP/1.1\r\n: empty name", 400, False),
    (b"\x16\x03\x01\x02\x00\x01", 400, False),  # a TLS hello
    (b"", 400, False),
])
def test_answer_status(head: bytes, status: int, head_only: bool) -> None:
    assert answer_status(head) == (status, head_only)


def test_responses_close_and_say_their_length() -> None:
    whole = response(200, b"abc\n")
    head, _, body = whole.partition(b"\r\n\r\n")
    assert body == b"abc\n"
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert set(lines[1:]) == {"Content-Type: text/plain; version=0.0.4; charset=utf-8",
                              "Content-Length: 4", "Connection: close"}
    assert response(200, b"abc\n", head_only=True) == head + b"\r\n\r\n"
    assert b"Allow: GET, HEAD\r\n" in response(405, b"")
    assert MAX_HEAD == 8192


# --- hand-over and the CPU counter ----------------------------------------------------

def state(metrics: object = None, with_key: bool = True) -> dict[str, object]:
    found: dict[str, object] = {"pidfile": 3, "control": 4,
                                "workers": {"sockets": {"web": 5}, "notify": 6,
                                            "logs": {"a": [[7, "stdout", ""]]}}}
    if with_key:
        found["metrics"] = metrics
    return found


def test_the_metrics_socket_survives_the_exec_when_there_is_one() -> None:
    assert sorted(kept_fds(state({"fd": 9, "address": "tcp://127.0.0.1:1"}))) == [3, 4, 5, 6,
                                                                                 7, 9]
    assert sorted(kept_fds(state(None))) == [3, 4, 5, 6, 7]
    assert sorted(kept_fds(state(with_key=False))) == [3, 4, 5, 6, 7]  # a state from before


STAT = (b"4242 (sh) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
        b"30 20 500 250 20 0 1 0 5000 1000000 200 18446744073709551615")


def test_parse_stat_reads_the_waited_for_childrens_time() -> None:
    stat = parse_stat(STAT)
    assert (stat.cpu_ticks, stat.waited_ticks) == (50, 750)


class OneProcess(ProcFiles):
    """/proc with one process, 4242, leading its own group."""

    def read(self, path: str, whole: bool = False) -> bytes | None:
        return {"4242/stat": STAT, "4242/statm": b"100 50 0 0 0 0 0\n"}.get(path, b"")

    def tasks(self, pid: str) -> list[str]:
        return [pid]


def test_cpu_seconds_count_the_group_and_the_children_it_waited_for() -> None:
    sampler = ResourceSampler(OneProcess())
    assert sampler.cpu_seconds("sh", 4242) is None  # not read yet
    sampler.measure({"sh": 4242})
    assert sampler.cpu_seconds("sh", 4242) == 800 / CLOCK_TICKS
    assert sampler.cpu_seconds("sh", 4243) is None  # a reading of another process


# --- the responder's shared text and its socket across images -------------------------

def test_scrapes_close_together_share_one_text() -> None:
    loop = Loop()
    rendered: list[int] = []

    def render() -> str:
        rendered.append(1)
        return f"text {len(rendered)}\n"

    sock = bind_metrics("tcp://127.0.0.1:0")
    server = MetricsServer(loop, sock, "tcp://127.0.0.1:0", render)
    try:
        holder = object()
        server.connections.add(holder)  # type: ignore[arg-type]
        assert server.body() == server.body() == b"text 1\n"
        server.forget(holder)  # type: ignore[arg-type]
        assert server.body() == b"text 2\n"  # the last one gone: made afresh
    finally:
        server.close()
        loop.close()


def test_an_endpoint_takes_its_socket_over_or_binds() -> None:
    loop = Loop()
    endpoint = MetricsEndpoint(loop, lambda: "")
    try:
        endpoint.open("tcp://127.0.0.1:0")
        saved = endpoint.handover()
        assert saved is not None and saved["address"] == "tcp://127.0.0.1:0"
        # As at the exec: the descriptor goes on, this image's hold on it does not.
        assert endpoint.server is not None
        loop.remove_reader(int(str(saved["fd"])))
        endpoint.server.sock.detach()
        successor = MetricsEndpoint(loop, lambda: "")
        successor.adopt(saved, "tcp://127.0.0.1:0")
        assert successor.handover() == saved  # the same socket
        successor.close()
        other = MetricsEndpoint(loop, lambda: "")
        other.adopt(None, "tcp://127.0.0.1:0")  # a state from before metrics
        assert other.handover() is not None
        other.close()
        nothing = MetricsEndpoint(loop, lambda: "")
        nothing.adopt(None, None)
        assert nothing.handover() is None
    finally:
        loop.close()
