"""Unit tests for superd.reload: the diff of two configs, without processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from superd.config import Config, load
from superd.reload import RESTART_NEEDED, diff, missing_sockets, summary_lines


def make(tmp_path: Path, workers: dict[str, Any], **top: Any) -> Config:
    path = tmp_path / "superd.yaml"
    path.write_text(yaml.safe_dump({"workers": workers, **top}))
    return load(str(path))


def sleeper(**keys: Any) -> dict[str, Any]:
    return {"command": ["sleep", "60"], **keys}


def test_added_removed_changed_unchanged(tmp_path: Path) -> None:
    old = make(tmp_path, {"keep": sleeper(), "gone": sleeper(), "edit": sleeper()})
    new = make(tmp_path, {"keep": sleeper(), "edit": sleeper(stopsignal="INT"),
                          "fresh": sleeper()})
    plan = diff(old, new)
    assert plan.added == ["fresh"]
    assert plan.removed == ["gone"]
    assert plan.changed == ["edit"]
    assert plan.unchanged == ["keep"]
    assert not plan.rebind and plan.daemon_changed == [] and plan.not_applied == []


def test_same_config_is_no_change(tmp_path: Path) -> None:
    old = make(tmp_path, {"a": sleeper(numprocs=3)})
    plan = diff(old, make(tmp_path, {"a": sleeper(numprocs=3)}))
    assert plan.unchanged == ["a:0", "a:1", "a:2"]
    assert summary_lines(plan.result()) == ["no changes"]


def test_numprocs_up_and_down_touch_only_the_extra_instances(tmp_path: Path) -> None:
    two = make(tmp_path, {"web": sleeper(numprocs=2)})
    four = make(tmp_path, {"web": sleeper(numprocs=4)})
    up = diff(two, four)
    assert (up.added, up.removed, up.changed) == (["web:2", "web:3"], [], [])
    assert up.unchanged == ["web:0", "web:1"]
    down = diff(four, two)
    assert (down.added, down.removed, down.changed) == ([], ["web:2", "web:3"], [])


def test_numprocs_across_one_renames_instances(tmp_path: Path) -> None:
    plan = diff(make(tmp_path, {"web": sleeper()}), make(tmp_path, {"web": sleeper(numprocs=2)}))
    assert plan.removed == ["web"] and plan.added == ["web:0", "web:1"]


def test_numprocs_with_another_change_restarts_the_kept_instances(tmp_path: Path) -> None:
    old = make(tmp_path, {"web": sleeper(numprocs=2)})
    plan = diff(old, make(tmp_path, {"web": sleeper(numprocs=3, environment={"X": "1"})}))
    assert plan.changed == ["web:0", "web:1"] and plan.added == ["web:2"]


def test_daemon_socket_change_asks_for_rebind(tmp_path: Path) -> None:
    old = make(tmp_path, {}, daemon={"socket": "run/a.sock"})
    plan = diff(old, make(tmp_path, {}, daemon={"socket": "run/b.sock",
                                                "shutdown_timeout": "3s"}))
    assert plan.rebind
    assert plan.daemon_changed == ["daemon.socket", "daemon.shutdown_timeout"]
    assert plan.config.daemon.socket.endswith("run/b.sock")


def test_fixed_parts_keep_running_values_and_are_reported(tmp_path: Path) -> None:
    old = make(tmp_path, {}, daemon={"pidfile": "run/a.pid"})
    new = make(tmp_path, {}, daemon={"pidfile": "run/b.pid"},
               sockets={"web": {"listen": "tcp://127.0.0.1:8080"}})
    plan = diff(old, new)
    assert plan.config.daemon.pidfile == old.daemon.pidfile
    assert plan.config.sockets == old.sockets == {}
    assert plan.not_applied == [f"daemon.pidfile: {RESTART_NEEDED}",
                                f"sockets: {RESTART_NEEDED}"]
    assert plan.daemon_changed == []
    assert f"not applied: sockets: {RESTART_NEEDED}" in summary_lines(plan.result())


def test_worker_needing_a_new_socket_is_detected(tmp_path: Path) -> None:
    old = make(tmp_path, {"a": sleeper()})
    new = make(tmp_path, {"a": sleeper(sockets=["web"])},
               sockets={"web": {"listen": "tcp://127.0.0.1:8080"}})
    assert missing_sockets(diff(old, new)) == ["web"]
    assert missing_sockets(diff(old, old)) == []


def test_summary_lines() -> None:
    result = {"added": ["a"], "removed": ["b", "c"], "changed": [], "daemon": [],
              "not_applied": []}
    assert summary_lines(result) == ["added: a", "removed: b, c"]
