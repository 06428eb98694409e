"""superctl top on a real terminal (a pane of a private tmux server) against a
real daemon: what it shows, that it follows changes, how it quits, narrow
and resized terminals, a re-exec and a daemon that goes away."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from superd import __version__ as VERSION
from support import DEADLINE, Superd, alive, wait_for

SLEEPER = ["sleep", "600"]
FAILS = ["sh", "-c", "exit 3"]
TOP_DELAY = "0.2"
# What bash does after top: print top's exit status and whether the tty's
# settings are back, then wait for the pane to be closed (tmux's
# remain-on-exit would scroll that first line away).
AFTER = 'echo "EXIT=$?"; [ "$(stty -g)" = "$before" ] && echo TTY=restored || echo TTY=changed' \
    '; read -r _'
SGR = re.compile(r"\x1b\[([0-9;]*)m")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def worker(command: list[str], **keys: object) -> dict[str, object]:
    return {"command": command, "startsecs": "200ms", **keys}


def failing(**keys: object) -> dict[str, object]:
    """Fails its every start; in BACKOFF for a long while after the first."""
    return worker(FAILS, backoff={"initial": "300s", "max": "300s"}, **keys)


class Pane:
    """One pane of a tmux server of our own, at a size we choose, whose
    command is bash running superctl top then AFTER."""

    def __init__(self, superd: Superd) -> None:
        self.superd = superd
        self.server = f"superd-top-{uuid.uuid4().hex[:12]}"
        self.config = superd.folder / "tmux.conf"
        # No status line: the pane is the whole window.
        self.config.write_text("set -g status off\n")
        self.env = {key: value for key, value in superd.env.items() if key != "TMUX"}
        self.pid: int | None = None
        self.socket: Path | None = None

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.server, "-f", str(self.config), *args],
                              env=self.env, capture_output=True, text=True, timeout=DEADLINE,
                              stdin=subprocess.DEVNULL, check=True)
        return done.stdout

    def start(self, width: int = 80, height: int = 24, colour: bool = False,
              command: list[str] | None = None) -> None:
        """Run superctl top (or another superctl command) in the pane."""
        top = [sys.executable, "-m", "superd.cli", "-s", self.superd.socket,
               *(command or ["top", "-d", TOP_DELAY])]
        prefix = "env -u NO_COLOR " if colour else ""
        script = self.superd.folder / "top.sh"
        script.write_text(f"before=$(stty -g)\n{prefix}{shlex.join(top)}\n{AFTER}\n")
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                  "-c", str(self.superd.folder), f"bash {shlex.quote(str(script))}")
        pid, socket = self.tmux("display-message", "-p", "-t", "top",
                                "#{pid} #{socket_path}").split(maxsplit=1)
        self.pid, self.socket = int(pid), Path(socket.strip())

    def lines(self, escapes: bool = False) -> list[str]:
        text = self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "top")
        return text.rstrip("\n").split("\n")

    def wait(self, predicate: Callable[[list[str]], object], what: str) -> list[str]:
        """The screen once predicate holds for it."""
        seen: list[list[str]] = [[]]

        def holds() -> list[str] | None:
            seen[0] = self.lines()
            return seen[0] if predicate(seen[0]) else None

        try:
            return wait_for(holds, what=what)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n" + "\n".join(seen[0])) from None

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", "top", "-x", str(width), "-y", str(height))

    def wait_ended(self) -> list[str]:
        """The main screen once bash has printed AFTER."""
        return self.wait(lambda lines: any(line.startswith("TTY=") for line in lines),
                         "top to end and bash to go on")

    def kill(self) -> None:
        """End the server, if one was started (and its pane's processes with it)."""
        subprocess.run(["tmux", "-L", self.server, "kill-server"], env=self.env,
                       capture_output=True, timeout=DEADLINE, check=False)
        pid = self.pid
        if pid is not None:
            wait_for(lambda: not alive(pid), what="the tmux server to exit")
        if self.socket is not None:
            self.socket.unlink(missing_ok=True)  # tmux leaves it behind


@pytest.fixture
def pane(superd: Superd) -> Iterator[Pane]:
    made = Pane(superd)
    try:
        yield made
    finally:
        made.kill()  # before the daemon's teardown looks for leftovers


def rows_of(lines: list[str]) -> list[list[str]]:
    """The table's rows: the cells of each line below the header."""
    return [line.split() for line in lines[2:] if line.strip()]


def table_states(lines: list[str]) -> list[tuple[str, str]]:
    return [(cells[0], cells[1]) for cells in rows_of(lines) if len(cells) > 1]


def colours(line: str) -> set[str]:
    """The foreground colours (SGR 30-37) set anywhere on a captured line."""
    return {code for params in SGR.findall(line) for code in params.split(";")
            if code in {str(n) for n in range(30, 38)}}


def start_mixed(superd: Superd) -> None:
    """Two RUNNING, one in BACKOFF, one FATAL, one STOPPED, in this config order."""
    superd.start({"web": worker(SLEEPER, numprocs=2), "flaky": failing(),
                  "broken": worker(FAILS, startretries=0),
                  "idle": worker(SLEEPER, autostart=False)})
    for name, state in [("web:0", "RUNNING"), ("web:1", "RUNNING"), ("flaky", "BACKOFF"),
                        ("broken", "FATAL")]:
        superd.wait_state(name, state)


ATTENTION_FIRST = [("flaky", "BACKOFF"), ("broken", "FATAL"), ("web:0", "RUNNING"),
                   ("web:1", "RUNNING"), ("idle", "STOPPED")]


# --- what it shows ------------------------------------------------------------------


def test_the_screen_shows_superd_the_header_and_every_instance_attention_first(
        superd: Superd, pane: Pane) -> None:
    start_mixed(superd)
    pane.start()
    lines = pane.wait(lambda lines: table_states(lines) == ATTENTION_FIRST,
                      "every instance in order")
    assert re.fullmatch(rf"superd {re.escape(VERSION)} pid {superd.pid} up \S+"
                        r" \| 2 running, 1 backoff, 1 fatal, 1 stopped", lines[0]), lines[0]
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS"]
    pids = {row["name"]: str(row["pid"] or "-") for row in superd.status()}
    assert {cells[0]: cells[2] for cells in rows_of(lines)} == pids
    assert all(len(line) <= 80 for line in lines)
    # NO_COLOR is set in the tests' environment: no colour at all.
    assert not any(colours(line) for line in pane.lines(escapes=True))


def test_states_are_coloured_without_no_color(superd: Superd, pane: Pane) -> None:
    start_mixed(superd)
    pane.start(colour=True)
    pane.wait(lambda lines: table_states(lines) == ATTENTION_FIRST, "every instance")
    painted = {SGR.sub("", line).split()[0]: colours(line)
               for line in pane.lines(escapes=True)[2:7]}
    assert painted == {"flaky": {"33"}, "broken": {"31"}, "web:0": {"32"}, "web:1": {"32"},
                       "idle": set()}


def test_a_state_change_shows_at_the_next_refresh(superd: Superd, pane: Pane) -> None:
    start_mixed(superd)
    pane.start()
    pane.wait(lambda lines: table_states(lines) == ATTENTION_FIRST, "every instance")
    assert superd.ctl("stop", "web:1").returncode == 0
    lines = pane.wait(lambda lines: table_states(lines)[-2:] == [("web:1", "STOPPED"),
                                                                 ("idle", "STOPPED")],
                      "web:1 STOPPED, among the stopped")
    assert "| 2 stopped, 1 backoff, 1 fatal, 1 running" in lines[0]
    assert superd.ctl("start", "idle").returncode == 0
    pane.wait(lambda lines: ("idle", "RUNNING") in table_states(lines), "idle RUNNING")


def test_health_shows_in_its_column_as_it_changes(superd: Superd, pane: Pane) -> None:
    check = ["sh", "-c", "[ ! -e sick ]"]
    superd.start({"web": worker(SLEEPER, healthcheck={"exec": check, "interval": "200ms",
                                                      "retries": 1}),
                  "plain": worker(SLEEPER)})
    pane.start()

    def health(lines: list[str]) -> dict[str, str]:
        return {cells[0]: cells[-1] for cells in rows_of(lines) if len(cells) > 1}

    lines = pane.wait(lambda lines: health(lines).get("web") == "healthy", "web healthy")
    assert lines[1].split()[-1] == "HEALTH" and health(lines)["plain"] == "-"
    (superd.folder / "sick").touch()  # unhealthy, restarted: starting (at once unhealthy)
    pane.wait(lambda lines: health(lines).get("web") in ("starting", "unhealthy"),
              "web no longer healthy")
    (superd.folder / "sick").unlink()
    pane.wait(lambda lines: health(lines).get("web") == "healthy", "web healthy again")
    assert superd.status("web")["restarts"] >= 1


# --- quitting ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_q_or_ctrl_c_quits_with_0_and_the_terminal_restored(
        superd: Superd, pane: Pane, key: str) -> None:
    superd.start({"web": worker(SLEEPER)})
    pane.start()
    pane.wait(lambda lines: ("web", "RUNNING") in table_states(lines), "web RUNNING")
    pane.keys(key)
    lines = pane.wait_ended()
    assert "EXIT=0" in lines and "TTY=restored" in lines
    # The main screen again: the table was on the alternate screen only.
    assert not any(line.startswith(("superd ", "NAME")) for line in lines), lines
    assert not any("Traceback" in line for line in lines)


# --- terminal sizes ----------------------------------------------------------------


def test_a_narrow_short_terminal_renders_and_follows_resizes(
        superd: Superd, pane: Pane) -> None:
    superd.start({"consumer-of-the-billing-queue": worker(SLEEPER, numprocs=10),
                  "broken": worker(FAILS, startretries=0)})
    superd.wait_state("broken", "FATAL")
    for index in range(10):
        superd.wait_state(f"consumer-of-the-billing-queue:{index}", "RUNNING")
    pane.start(width=40, height=8)
    lines = pane.wait(lambda lines: len(lines) == 8 and "more" in lines[-1], "8 lines")
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME"]
    assert all(len(line) <= 40 for line in lines)
    assert re.fullmatch(r"(…|\.\.\.) 6 more", lines[-1])
    assert rows_of(lines)[0][:2] == ["broken", "FATAL"]
    # Names are cut in the middle: each instance keeps its index.
    assert [cells[0][-2:] for cells in rows_of(lines)[1:5]] == [":0", ":1", ":2", ":3"]

    pane.resize(80, 24)
    lines = pane.wait(lambda lines: len(table_states(lines)) == 11, "all 11 rows")
    assert lines[1].split()[-1] == "RSS"
    for width, height in [(2, 1), (1, 3), (15, 3)]:  # never an error, however small
        pane.resize(width, height)
        pane.wait(lambda lines, width=width, height=height: len(lines) <= height
                  and lines[0] == f"superd {VERSION} pid"[:width], f"a {width}x{height} screen")
    pane.resize(80, 24)
    pane.wait(lambda lines: len(table_states(lines)) == 11, "all 11 rows again")
    pane.keys("q")
    assert "EXIT=0" in pane.wait_ended()


# --- the daemon --------------------------------------------------------------------


def test_top_survives_a_reexec_and_the_daemon_going_away(superd: Superd, pane: Pane) -> None:
    superd.start({"web": worker(SLEEPER)})
    first = superd.pid
    pane.start()
    pane.wait(lambda lines: ("web", "RUNNING") in table_states(lines), "web RUNNING")
    assert superd.ctl("reexec").returncode == 0
    lines = pane.wait(lambda lines: f"pid {first} " in lines[0] and " re-execs 1 " in lines[0],
                      "the new image's line")
    assert ("web", "RUNNING") in table_states(lines)

    assert superd.ctl("shutdown").returncode == 0
    lines = pane.wait(lambda lines: lines[0].startswith("superd unreachable: "),
                      "superd unreachable")
    assert len([line for line in lines if line]) == 1, lines

    superd.start()  # the same config, a new daemon: top finds it at a refresh
    assert superd.pid != first
    pane.wait(lambda lines: lines[0].startswith(f"superd {VERSION} pid {superd.pid} ")
              and ("web", "RUNNING") in table_states(lines), "the new daemon's screen")
    pane.keys("q")
    assert "EXIT=0" in pane.wait_ended()


# --- refusals, without a terminal -------------------------------------------------------


def test_top_needs_a_terminal_and_a_daemon(superd: Superd, tmp_path: Path) -> None:
    superd.start({"web": worker(SLEEPER)})
    piped = superd.ctl("top")
    assert (piped.returncode, piped.stderr) == (1, "superctl: top needs a terminal\n")
    missing = subprocess.run([sys.executable, "-m", "superd.cli", "-s",
                              str(tmp_path / "none.sock"), "top"], env=superd.env,
                             capture_output=True, text=True, timeout=DEADLINE)
    assert missing.returncode == 4
    assert missing.stderr.startswith("superctl: cannot reach superd at ")
    bad = superd.ctl("top", "-d", "0")
    assert bad.returncode == 2 and "expected a positive number of seconds" in bad.stderr
    assert os.path.exists(superd.socket)  # none of these bothered the daemon


def test_logs_of_several_instances_colour_their_prefixes_on_a_terminal(
        superd: Superd, pane: Pane) -> None:
    # superctl logs, not top: the same real terminal shows its coloured prefixes.
    superd.start({"w": worker(["sh", "-c", "echo hello; exec sleep 600"], numprocs=2)})
    wait_for(lambda: all(superd.log_file(f"w:{i}").read_text() == "hello\n" for i in (0, 1)))
    pane.start(colour=True, command=["logs", "w", "-n", "2"])
    pane.wait_ended()
    screen = pane.lines(escapes=True)
    # tmux writes the reset after a foreground colour as "default foreground".
    assert sorted(screen[:2]) == ["\x1b[32mw:1\x1b[39m | hello", "\x1b[36mw:0\x1b[39m | hello"]
