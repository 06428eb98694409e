"""`superctl metrics` of a real daemon, read with prometheus_client's parser
and held to `superctl --json status`; and checked by promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from superd.resources import FRESH_FOR
from superd.states import State
from support import DEADLINE, Superd, small_disk, wait_for

PY = sys.executable
SPIN = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"

# The parser names a counter family without its _total (its samples keep it).
FAMILY_TYPES = {
    "superd_up": "gauge",
    "superd_info": "gauge",
    "superd_instance_up": "gauge",
    "superd_instance_state": "gauge",
    "superd_instance_restarts": "counter",
    "superd_instance_cpu_seconds": "counter",
    "superd_instance_rss_bytes": "gauge",
    "superd_instance_start_time_seconds": "gauge",
    "superd_instance_log_dropped_bytes": "counter",
    "superd_instance_healthy": "gauge",
}
PROCESS_FAMILIES = ("superd_instance_cpu_seconds", "superd_instance_rss_bytes",
                    "superd_instance_start_time_seconds")


def sleeper(**keys: Any) -> dict[str, Any]:
    return {"command": ["sleep", "600"], "startsecs": 0, **keys}


def metrics_text(superd: Superd) -> str:
    done = superd.ctl("metrics")
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_rows(superd: Superd) -> dict[str, dict[str, Any]]:
    done = superd.ctl("--json", "status")
    assert done.returncode in (0, 3), done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def parsed(text: str) -> dict[str, tuple[str, list[Sample]]]:
    families = {family.name: (family.type, family.samples)
                for family in text_string_to_metric_families(text)}
    assert len(families) == text.count("# TYPE ")  # no family split in two
    return families


def by_instance(samples: list[Sample]) -> dict[str, float]:
    """Instance name -> value, for samples labelled {name, worker} and nothing else."""
    values = {}
    for sample in samples:
        assert set(sample.labels) == {"name", "worker"}, sample
        assert sample.labels["worker"] == sample.labels["name"].partition(":")[0]
        values[sample.labels["name"]] = sample.value
    return values


def check_against_status(text: str, rows: dict[str, dict[str, Any]], version: str) -> None:
    assert text.endswith("\n")
    for family in FAMILY_TYPES:
        name = family + ("_total" if FAMILY_TYPES[family] == "counter" else "")
        assert text.count(f"# HELP {name} ") == 1 and text.count(f"# TYPE {name} ") == 1
    families = parsed(text)
    assert {name: kind for name, (kind, _) in families.items()} == FAMILY_TYPES
    samples = {name: family_samples for name, (_, family_samples) in families.items()}
    assert [(s.name, s.labels, s.value) for s in samples["superd_up"]] == [("superd_up", {}, 1)]
    assert [(s.labels, s.value) for s in samples["superd_info"]] == [({"version": version}, 1)]
    assert by_instance(samples["superd_instance_up"]) == {
        name: float(row["state"] == "RUNNING") for name, row in rows.items()}
    states: dict[str, dict[str, float]] = {}
    for sample in samples["superd_instance_state"]:
        assert set(sample.labels) == {"name", "worker", "state"}
        states.setdefault(sample.labels["name"], {})[sample.labels["state"]] = sample.value
    assert states == {name: {state.value: float(state.value == row["state"]) for state in State}
                      for name, row in rows.items()}
    assert by_instance(samples["superd_instance_restarts"]) == {
        name: row["restarts"] for name, row in rows.items()}
    assert by_instance(samples["superd_instance_log_dropped_bytes"]) == {
        name: row["log_dropped_bytes"] for name, row in rows.items()}
    running = {name for name, row in rows.items() if row["pid"] is not None}
    for family in PROCESS_FAMILIES:
        assert set(by_instance(samples[family])) == running, family
    now = time.time()
    for name, start in by_instance(samples["superd_instance_start_time_seconds"]).items():
        assert abs(start - (now - rows[name]["uptime"])) < 5, name
    assert samples["superd_instance_healthy"] == []  # no worker has a healthcheck


def rss_agrees(superd: Superd) -> bool:
    """RSS of metrics and status from one reading of /proc (reused for 0.5 s)."""
    rows = status_rows(superd)
    rss = by_instance(parsed(metrics_text(superd))["superd_instance_rss_bytes"][1])
    return rss == {name: row["rss_bytes"] for name, row in rows.items()
                   if row["pid"] is not None}


def test_superctl_metrics_agrees_with_status(superd: Superd) -> None:
    superd.start({
        "web": sleeper(numprocs=3),
        # Its shell waits for a child that spins half a second, then becomes sleep.
        "spun": {"command": ["sh", "-c", f"{PY} -c '{SPIN}'; exec sleep 600"], "startsecs": 0},
        "off": sleeper(autostart=False),
        "bad": {"command": ["false"], "startsecs": "1s", "startretries": 1,
                "backoff": {"initial": "10ms"}},
    })
    wait_for(lambda: [row["state"] for row in status_rows(superd).values()]
             == ["RUNNING"] * 4 + ["STOPPED", "FATAL"], what="the states to settle")
    version = superd.call("ping")["version"]
    rows = status_rows(superd)
    assert rows["bad"]["restarts"] == 1  # one retry: a restart, in both
    check_against_status(metrics_text(superd), rows, version)
    wait_for(lambda: rss_agrees(superd), what="the same RSS in metrics and status")

    # The spinning child's CPU time stays with the group after it has exited.
    def spun_cpu() -> float:
        samples = parsed(metrics_text(superd))["superd_instance_cpu_seconds"][1]
        return by_instance(samples)["spun"]

    pid = rows["spun"]["pid"]
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"),
             what="the child to exit and its shell to become sleep")
    time.sleep(FRESH_FOR)  # the sampler's window: its next reading is of sleep alone
    assert spun_cpu() >= 0.4

    # A change shows at once: no figure is kept for a stopped instance.
    assert superd.ctl("stop", "web:1").returncode == 0
    assert superd.ctl("restart", "web:2").returncode == 0
    rows = status_rows(superd)
    assert rows["web:1"]["state"] == "STOPPED"
    check_against_status(metrics_text(superd), rows, version)

    wrapped = superd.ctl("--json", "metrics")
    assert wrapped.returncode == 0, wrapped.stderr
    assert set(json.loads(wrapped.stdout)) == {"text"}
    assert parsed(json.loads(wrapped.stdout)["text"]).keys() == FAMILY_TYPES.keys()


def test_dropped_log_bytes_agree_with_status(superd: Superd, tmp_path: Path) -> None:
    with small_disk(tmp_path / "small") as small:
        # About 1 MB of output to a 256 KiB disk, then quiet.
        superd.start({"full": {"command": ["sh", "-c", "yes full | head -c 1000000; "
                                                       "exec sleep 600"],
                               "startsecs": 0,
                               "stdout": {"file": str(small / "full.log"), "maxbytes": 0}}})

        def settled() -> int:
            first = superd.status("full")["log_dropped_bytes"]
            time.sleep(0.2)  # the worker is quiet once the count stays
            return first if first > 0 and superd.status("full")["log_dropped_bytes"] == first \
                else 0

        dropped = wait_for(settled, what="the disk to fill and the worker to go quiet")
        samples = parsed(metrics_text(superd))["superd_instance_log_dropped_bytes"][1]
        assert by_instance(samples) == {"full": dropped}
        superd.stop()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_text(superd: Superd) -> None:
    superd.start({"web": sleeper(numprocs=2), "off": sleeper(autostart=False)})
    superd.wait_state("web:1", "RUNNING")
    text = metrics_text(superd)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=DEADLINE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # not even a lint warning
    broken = text.replace("# TYPE superd_instance_up gauge\n", "")  # the check can fail
    assert subprocess.run(["promtool", "check", "metrics"], input=broken + broken, text=True,
                          capture_output=True, timeout=DEADLINE).returncode != 0


def test_healthy_follows_the_healthcheck(superd: Superd) -> None:
    superd.start({
        "fine": sleeper(numprocs=2, healthcheck={"exec": ["true"], "interval": "100ms"}),
        "waiting": sleeper(healthcheck={"exec": ["true"], "start_period": "10m"}),
        "plain": sleeper(),
    })

    def health() -> dict[str, Any]:
        return {name: row["health"] for name, row in status_rows(superd).items()}

    wait_for(lambda: health() == {"fine:0": "healthy", "fine:1": "healthy",
                                  "waiting": "starting", "plain": None},
             what="the healthchecks' verdicts")
    [(kind, samples)] = [family for name, family in parsed(metrics_text(superd)).items()
                         if name == "superd_instance_healthy"]
    assert kind == "gauge"
    assert by_instance(samples) == {"fine:0": 1, "fine:1": 1, "waiting": 0}
