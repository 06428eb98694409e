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
    # A re-exec is not a reload: the env file is not read again.
    env_file.write_text("GREETING=later\nCOLOUR=green\n")
    assert superd.ctl("reexec").returncode == 0
    assert superd.ctl("restart", "app:1").returncode == 0
    wait_for(lambda: log.read_text().count("bye red") == 2)
    assert "later" not in log.read_text()


def test_includes_are_read_again_at_reload_and_not_at_reexec(superd: Superd) -> None:
    conf_d = superd.folder / "conf.d"
    conf_d.mkdir()
    (conf_d / "a.yaml").write_text("workers:\n  a: {command: [sleep, '600'], startsecs: 0}\n")
    superd.start({"main": sleeper()}, include=["conf.d/*.yaml"])
    superd.wait_state("a", "RUNNING")
    pid_a = superd.status("a")["pid"]
    (conf_d / "b.yaml").write_text(
        "workers:\n  b: {command: [sleep, '600'], startsecs: 0}\ngroups:\n  ab: [a, b]\n")
    reload = superd.ctl("reload")
    assert reload.returncode == 0 and "added: b" in reload.stdout, reload.stdout
    superd.wait_state("b", "RUNNING")
    assert superd.status("a")["pid"] == pid_a  # unchanged: not touched
    assert [row["name"] for row in superd.status("ab")] == ["a", "b"]
    # A re-exec carries the files as they were read: c is not read.
    (conf_d / "c.yaml").write_text("workers:\n  c: {command: [sleep, '600']}\n")
    assert superd.ctl("reexec").returncode == 0
    assert [row["name"] for row in superd.status()] == ["main", "a", "b"]
    # A name defined twice is refused at reload, naming both files.
    (conf_d / "c.yaml").write_text("workers:\n  a: {command: [sleep, '1']}\n")
    refused = superd.ctl("reload")
    assert refused.returncode == 1
    assert "c.yaml:2: workers.a: defined twice (first at" in refused.stderr
    assert "a.yaml:2" in refused.stderr


def one_shot(code: int, marker: str) -> dict[str, object]:
    return {"command": ["sh", "-c", f"sleep 0.3; echo ran >> {marker}; exit {code}"],
            "startsecs": 0, "autorestart": "never"}


def test_a_worker_waits_for_a_one_shot_to_complete(superd: Superd) -> None:
    marker = superd.folder / "migrations"
    superd.start({"migrate": one_shot(0, str(marker)),
                  "web": sleeper(depends_on=["db", {"migrate": "completed"}]),
                  "db": sleeper()})
    web = superd.wait_state("web", "RUNNING")
    migrate = superd.status("migrate")
    assert (migrate["state"], migrate["exit_status"]) == ("EXITED", 0)
    assert marker.read_text() == "ran\n"
    # Restarting web does not run a completed one-shot again.
    assert superd.ctl("restart", "web").returncode == 0
    assert superd.status("web")["pid"] != web["pid"]
    assert marker.read_text() == "ran\n"


def test_a_failed_one_shot_fails_the_start_of_its_dependent(superd: Superd) -> None:
    marker = superd.folder / "migrations"
    superd.start({"migrate": one_shot(3, str(marker)),
                  "web": sleeper(depends_on=[{"migrate": "completed"}])})
    wait_for(lambda: superd.status("migrate")["state"] == "EXITED")
    started = superd.ctl("start", "web")
    assert started.returncode == 1
    assert superd.status("web")["state"] == "STOPPED"
    log = (superd.folder / "log" / "superd.log").read_text()
    assert "web: not started: dependency migrate did not complete (exit 3)" in log


def test_a_completed_dependency_must_be_a_one_shot(superd: Superd) -> None:
    superd.write_config({"migrate": sleeper(),
                         "web": sleeper(depends_on=[{"migrate": "completed"}])})
    checked = superd.run("--check", "-c", str(superd.config_path))
    assert checked.returncode == 2
    assert "workers.web.depends_on: migrate is waited for as completed" in checked.stderr
