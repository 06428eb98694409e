"""Config features through real daemons: groups (and, as they come,
includes, env files and expansion)."""

from __future__ import annotations

import sys

from support import Superd, wait_for


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


def test_variables_and_env_files_reach_each_instance(superd: Superd) -> None:
    env_file = superd.folder / "app.env"
    env_file.write_text("GREETING='hello there'\nexport COLOUR=blue\n")
    script = ("import os, sys; print(sys.argv[1], os.environ['GREETING'], "
              "os.environ['COLOUR'], os.environ['WHO'], os.getcwd(), flush=True); "
              "import time; time.sleep(600)")
    (superd.folder / "work-0").mkdir()
    (superd.folder / "work-1").mkdir()
    superd.start({"app": sleeper(
        command=[sys.executable, "-c", script, "n=${SUPERD_INSTANCE}$$"], numprocs=2,
        env_file=["app.env", "-absent.env"], directory="work-${SUPERD_INSTANCE}",
        environment={"WHO": "${SUPERD_NAME} of ${SUPERD_WORKER}"},
        stdout={"file": "log/${SUPERD_WORKER}-${SUPERD_INSTANCE}.txt"})})
    for index in (0, 1):
        log = superd.folder / "log" / f"app-{index}.txt"
        wait_for(lambda log=log: log.exists() and log.read_text().endswith("\n"))
        assert log.read_text() == (f"n={index}$ hello there blue app:{index} of app "
                                   f"{superd.folder / f'work-{index}'}\n")
    # A changed env file makes the worker changed at reload: it is restarted.
    pids = [row["pid"] for row in superd.status("app")]
    env_file.write_text("GREETING=bye\nCOLOUR=red\n")
    reload = superd.ctl("reload")
    assert reload.returncode == 0 and "changed: app" in reload.stdout, reload.stdout
    new = [row["pid"] for row in superd.status("app")]
    assert not set(new) & set(pids)
    log = superd.folder / "log" / "app-1.txt"
    wait_for(lambda: "bye red" in log.read_text())
