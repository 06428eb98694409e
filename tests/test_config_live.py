"""Config features through real daemons: groups (and, as they come,
includes, env files and expansion)."""

from __future__ import annotations

from support import Superd


def sleeper(**keys: object) -> dict[str, object]:
    return {"command": ["sleep", "600"], "startsecs": 0, **keys}


def test_every_command_that_takes_names_takes_a_group(superd: Superd) -> None:
    superd.start({"web": sleeper(numprocs=2), "api": sleeper(), "db": sleeper()},
                 groups={"app": ["web", "api"]})
    superd.wait_state("db", "RUNNING")
    assert [row["name"] for row in superd.status("app")] == ["web:0", "web:1", "api"]
    stopped = superd.ctl("stop", "app")
    assert stopped.returncode == 0, stopped.stderr
    states = {row["name"]: row["state"] for row in superd.status()}
    assert states == {"web:0": "STOPPED", "web:1": "STOPPED", "api": "STOPPED",
                      "db": "RUNNING"}
    assert superd.ctl("start", "app").returncode == 0
    assert superd.ctl("signal", "CONT", "app").returncode == 0
    assert superd.ctl("restart", "app").returncode == 0
    assert superd.ctl("status", "app").returncode == 0
    assert superd.ctl("logs", "app", "-n", "1").returncode == 0
    assert all(row["restarts"] == 0 for row in superd.status())  # a restart is asked, not a crash
