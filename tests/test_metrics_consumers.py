"""Real consumers of the metrics: a Prometheus server scraping daemon.metrics,
and node_exporter's textfile collector reading `superctl metrics` from a file.
Each runs on loopback ports of its own, from a temporary folder, and is
stopped and reaped by the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import DEADLINE, Superd, wait_for

CONSUMER_DEADLINE = 60.0  # a Prometheus server on a loaded machine takes its time to start


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as answer:
            return bytes(answer.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@contextmanager
def running(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A consumer as a child of the test: SIGTERM at the end, SIGKILL at the
    deadline, reaped either way."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, cwd=log.parent)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(DEADLINE)


def sleepers(count: int) -> dict[str, Any]:
    return {"web": {"command": ["sleep", "600"], "startsecs": 0, "numprocs": count},
            "off": {"command": ["sleep", "600"], "autostart": False}}


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_a_prometheus_server_scrapes_daemon_metrics(superd: Superd, tmp_path: Path) -> None:
    metrics_port, server_port = free_port(), free_port()
    superd.start(sleepers(3), daemon={"metrics": f"tcp://127.0.0.1:{metrics_port}"})
    superd.wait_state("web:2", "RUNNING")
    folder = tmp_path / "prometheus"
    folder.mkdir()
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "superd",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{server_port}", "--log.level=warn"]
    api = f"http://127.0.0.1:{server_port}/api/v1/query?query="

    def query(expression: str) -> list[dict[str, Any]]:
        answer = fetch(api + urllib.parse.quote(expression))
        if answer is None:
            return []
        result: list[dict[str, Any]] = json.loads(answer)["data"]["result"]
        return result

    def instances_up() -> dict[str, str] | None:
        found = {row["metric"]["name"]: row["value"][1] for row in query("superd_instance_up")}
        return found if len(found) == 4 else None

    with running(argv, folder / "prometheus.log", superd.env) as server:
        up = wait_for(instances_up, CONSUMER_DEADLINE, "Prometheus to have scraped superd")
        assert up == {"web:0": "1", "web:1": "1", "web:2": "1", "off": "0"}
        [target] = query('up{job="superd"}')
        assert target["value"][1] == "1"
        # Prometheus took the labels and the types as superd wrote them.
        running_web = query('superd_instance_state{state="RUNNING",worker="web"}')
        assert sorted(row["metric"]["name"] for row in running_web) == ["web:0", "web:1", "web:2"]
        assert server.poll() is None, (folder / "prometheus.log").read_text()


@pytest.mark.skipif(shutil.which("prometheus-node-exporter") is None,
                    reason="prometheus-node-exporter is not installed")
def test_node_exporter_reads_superctl_metrics_from_a_textfile(superd: Superd,
                                                              tmp_path: Path) -> None:
    superd.start(sleepers(2))
    superd.wait_state("web:1", "RUNNING")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    done = superd.ctl("metrics")
    assert done.returncode == 0, done.stderr
    # As a cron job would: written beside, then renamed, so no half file is read.
    (textfiles / "superd.prom.tmp").write_text(done.stdout)
    os.rename(textfiles / "superd.prom.tmp", textfiles / "superd.prom")
    port = free_port()
    argv = ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={textfiles}"]
    with running(argv, tmp_path / "node_exporter.log", superd.env):
        page = wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), CONSUMER_DEADLINE,
                        "node_exporter to answer")
    families = {family.name: family for family in text_string_to_metric_families(page.decode())}
    assert [sample.value for sample in families["node_textfile_scrape_error"].samples] == [0]
    up = {sample.labels["name"]: sample.value for sample in families["superd_instance_up"].samples}
    assert up == {"web:0": 1, "web:1": 1, "off": 0}
    assert families["superd_instance_restarts"].type == "counter"
