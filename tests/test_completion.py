"""`superctl completion bash|zsh`: the scripts, run by the real shells against a real daemon."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from superd import cli, cliargs, completion
from support import DEADLINE, Superd

PY = sys.executable

# What a shell's completion machinery does for the line typed so far (the
# cursor at its end): set COMP_LINE and COMP_POINT, call the function.
BASH_COMPLETE = r"""
source <(superctl completion bash) || exit 97
[[ $(complete -p superctl) == *"-F _superctl_complete superctl" ]] || exit 98
COMP_LINE=$1
COMP_POINT=${#1}
read -ra COMP_WORDS <<< "$COMP_LINE"
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_superctl_complete
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture
def shell_env(superd: Superd) -> dict[str, str]:
    """superd's environment with a `superctl` on PATH, as a user's shell has."""
    folder = superd.folder / "bin"
    folder.mkdir()
    wrapper = folder / "superctl"
    wrapper.write_text(f'#!/bin/sh\nexec {PY} -m superd.cli "$@"\n')
    wrapper.chmod(0o755)
    return dict(superd.env, PATH=f"{folder}:{superd.env.get('PATH', '/usr/bin:/bin')}")


def superctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["superctl", *args], env=env, capture_output=True, text=True,
                          timeout=DEADLINE, stdin=subprocess.DEVNULL)


def bash_complete(env: dict[str, str], line: str, cwd: Path | None = None) -> list[str]:
    done = subprocess.run(["bash", "-c", BASH_COMPLETE, "bash", line], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=DEADLINE,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stderr == ""
    return [word for word in done.stdout.splitlines() if word]


def start_web_and_db(superd: Superd) -> None:
    superd.start({"web": {"command": ["sleep", "600"], "numprocs": 2, "startsecs": 0},
                  "db": {"command": ["sleep", "600"], "startsecs": 0}},
                 groups={"stack": ["web", "db"]})


# -- the scripts -------------------------------------------------------------------


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_completion_prints_a_script_without_a_daemon(
    shell_env: dict[str, str], shell: str
) -> None:
    done = superctl(shell_env, "-s", "/nonexistent/superd.sock", "completion", shell)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "_superctl" in done.stdout
    if shutil.which(shell) is not None:
        checked = subprocess.run([shell, "-n"], input=done.stdout, capture_output=True,
                                 text=True, timeout=DEADLINE)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("argv", [["completion"], ["completion", "fish"],
                                  ["completion", "bash", "zsh"]])
def test_an_unknown_or_missing_shell_is_a_usage_error(
    shell_env: dict[str, str], argv: list[str]
) -> None:
    done = superctl(shell_env, *argv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("usage: superctl")


def test_the_scripts_cover_every_command_and_option() -> None:
    parser = cliargs.build_parser(cli.COMMANDS)
    spec = completion.grammar(parser)
    assert sorted(command.name for command in spec.commands) == sorted(cli.COMMANDS)
    bash, zsh = completion.script("bash", parser), completion.script("zsh", parser)
    for command in spec.commands:
        assert f"            {command.name}) candidates=" in bash
        assert f"                {command.name}) _arguments " in zsh
        for option in command.options:
            for flag in option.flags:
                assert flag in bash and flag in zsh
    logs = next(command for command in spec.commands if command.name == "logs")
    assert {flag for option in logs.options for flag in option.flags} >= {
        "-n", "--lines", "-f", "--follow", "--stderr", "--json"}
    assert "--names" not in bash.replace("completion bash --names", "")  # hidden


def test_names_are_all_then_workers_and_instances_each_once() -> None:
    rows = [{"name": "web:0", "worker": "web"}, {"name": "web:1", "worker": "web"},
            {"name": "db", "worker": "db"}]
    assert completion.names(rows) == ["all", "web", "web:0", "web:1", "db"]
    assert completion.names([]) == ["all"]
    assert completion.names(rows, ["app", 3]) == ["all", "app", "web", "web:0", "web:1", "db"]


# -- bash ----------------------------------------------------------------------------


def test_bash_completes_commands_and_options(shell_env: dict[str, str], tmp_path: Path) -> None:
    env = shell_env
    assert bash_complete(env, "superctl st") == ["status", "start", "stop"]
    assert "completion" in bash_complete(env, "superctl ")
    assert bash_complete(env, "superctl -") == ["-h", "--help", "-c", "--config", "-s",
                                                "--socket", "--json"]
    assert bash_complete(env, "superctl -s x --js") == ["--json"]
    assert bash_complete(env, "superctl start --") == ["--help", "--json", "--no-wait"]
    assert bash_complete(env, "superctl restart --") == ["--help", "--json", "--no-wait",
                                                         "--rolling"]
    assert set(bash_complete(env, "superctl logs -")) >= {"-n", "-f", "--stderr", "--json"}
    assert bash_complete(env, "superctl top -") == ["-h", "--help", "--json", "-d", "--delay"]
    assert bash_complete(env, "superctl completion ") == ["bash", "zsh"]
    assert bash_complete(env, "superctl completion bash ") == []
    assert bash_complete(env, "superctl signal HU") == ["HUP"]
    assert bash_complete(env, "superctl logs -n ") == []  # a number
    (tmp_path / "other.yaml").write_text("")
    assert bash_complete(env, "superctl -c oth", cwd=tmp_path) == ["other.yaml"]


def test_bash_completes_the_running_daemons_names(
    superd: Superd, shell_env: dict[str, str]
) -> None:
    start_web_and_db(superd)
    env, sock = shell_env, superd.socket
    assert bash_complete(env, f"superctl -s {sock} status ") == [
        "all", "stack", "web", "web:0", "web:1", "db"]
    assert bash_complete(env, f"superctl -s {sock} restart st") == ["stack"]
    assert bash_complete(env, f"superctl -s {sock} stop w") == ["web", "web:0", "web:1"]
    # bash splits words at ":" and puts a reply in place of what follows it.
    assert bash_complete(env, f"superctl -s {sock} restart --no-wait web:") == ["0", "1"]
    assert bash_complete(env, f"superctl --socket={sock} signal TERM web d") == ["db"]
    assert bash_complete(env, f"superctl -s {sock} logs -n 5 -f d") == ["db"]
    # -c: the socket of that config, as superctl itself finds it.
    assert bash_complete(env, f"superctl -c {superd.config_path} start a") == ["all"]
    assert bash_complete(dict(env, SUPERD_SOCKET=sock), "superctl stop d") == ["db"]
    listing = superctl(env, "-s", sock, "completion", "zsh", "--names")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["all", "stack", "web", "web:0", "web:1", "db"]


def test_bash_offers_no_names_and_prints_nothing_while_the_daemon_is_down(
    superd: Superd, shell_env: dict[str, str]
) -> None:
    env = shell_env
    assert bash_complete(env, f"superctl -s {superd.socket} status ") == []
    assert bash_complete(env, f"superctl -c {superd.folder / 'missing.yaml'} stop w") == []
    start_web_and_db(superd)
    assert bash_complete(env, f"superctl -s {superd.socket} stop d") == ["db"]
    superd.stop()
    assert bash_complete(env, f"superctl -s {superd.socket} stop ") == []
    listing = superctl(env, "-s", superd.socket, "completion", "bash", "--names")
    assert (listing.returncode, listing.stdout, listing.stderr) == (4, "", "")


def test_the_names_listing_gives_up_quietly_on_a_daemon_that_never_answers(
    shell_env: dict[str, str], tmp_path: Path
) -> None:
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(path)
        mute.listen()  # connections queue; none is ever answered
        begun = time.monotonic()
        listing = superctl(shell_env, "-s", path, "completion", "bash", "--names")
        took = time.monotonic() - begun
    assert (listing.returncode, listing.stdout, listing.stderr) == (4, "", "")
    assert cli.COMPLETION_TIMEOUT <= took < cli.COMPLETION_TIMEOUT + DEADLINE / 2


# -- zsh -----------------------------------------------------------------------------

needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None,
                               reason="zsh is not installed (CI installs it: .ci/run)")

# compinit in a throw-away ZDOTDIR; -u: root's fpath is not "insecure" to us.
ZSH_PRELUDE = 'autoload -U compinit && compinit -u -d "$ZDOTDIR/.zcompdump"\n'


def zsh(env: dict[str, str], script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["zsh", "-f", "-c", ZSH_PRELUDE + script, "zsh", *args], env=env,
                          capture_output=True, text=True, timeout=DEADLINE,
                          stdin=subprocess.DEVNULL)


@needs_zsh
def test_zsh_script_loads_by_source_and_from_fpath(
    shell_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(shell_env, ZDOTDIR=str(tmp_path))
    sourced = zsh(env, "source <(superctl completion zsh)\nprint -r -- $_comps[superctl]")
    assert (sourced.returncode, sourced.stdout, sourced.stderr) == (0, "_superctl\n", "")
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "_superctl").write_text(superctl(env, "completion", "zsh").stdout)
    found = subprocess.run(
        ["zsh", "-f", "-c", f"fpath=({functions} $fpath)\n" + ZSH_PRELUDE
         + "print -r -- $_comps[superctl]"],
        env=env, capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)
    assert (found.returncode, found.stdout, found.stderr) == (0, "_superctl\n", "")


@needs_zsh
def test_zsh_lists_the_running_daemons_names(
    superd: Superd, shell_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(shell_env, ZDOTDIR=str(tmp_path))
    listing = "source <(superctl completion zsh)\n_superctl_name_list superctl \"$@\"\n" \
              "print -r -- \"${#reply} ${(j:,:)reply}\"\n"
    down = zsh(env, listing, "-s", superd.socket)
    assert (down.returncode, down.stdout, down.stderr) == (0, "0 \n", "")
    start_web_and_db(superd)
    up = zsh(env, listing, "-c", str(superd.config_path))
    assert (up.returncode, up.stdout, up.stderr) == (0, "6 all,stack,web,web:0,web:1,db\n", "")


# A real interactive zsh in a pseudo-terminal (zsh/zpty): type the line, press
# Tab twice, read the screen until `until` shows up or the deadline passes.
ZSH_TYPE_TAB = r"""
zmodload zsh/zpty || exit 97
zpty z 'zsh -f -i'
zpty -w z 'PS1="> "; autoload -U compinit; compinit -u -d "$ZDOTDIR/.zcompdump"'
zpty -w z 'source <(superctl completion zsh)'
zpty -wn z "$1"$'\t\t'
typeset -F SECONDS
local out="" line deadline=$(( SECONDS + 15 ))
while (( SECONDS < deadline )) && [[ $out != *"$2"* ]]; do
    if zpty -r -t z line; then out+=$line; else sleep 0.05; fi
done
zpty -d z
print -r -- "$out"
"""


def zsh_tab(env: dict[str, str], line: str, until: str) -> str:
    done = subprocess.run(["zsh", "-f", "-c", ZSH_TYPE_TAB, "zsh", line, until], env=env,
                          capture_output=True, text=True, timeout=DEADLINE * 2,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stdout)


@needs_zsh
def test_zsh_completes_commands_options_and_names_at_a_tab(
    superd: Superd, shell_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(shell_env, ZDOTDIR=str(tmp_path), TERM="xterm")
    screen = zsh_tab(env, "superctl sta", "status")
    assert "start" in screen and "status" in screen
    screen = zsh_tab(env, "superctl logs --", "--stderr")
    assert "--follow" in screen and "--lines" in screen and "--stderr" in screen
    start_web_and_db(superd)
    screen = zsh_tab(env, f"superctl -s {superd.socket} stop we", "web:1")
    assert "web:0" in screen and "web:1" in screen


def test_superctl_status_does_not_import_completion() -> None:
    script = ("import sys\nfrom superd import cli\n"
              "cli.main(['-s', '/nonexistent/superd.sock', 'status'])\n"
              "print('superd.completion' in sys.modules, 'argparse' in sys.modules)\n")
    done = subprocess.run([PY, "-c", script], capture_output=True, text=True,
                          timeout=DEADLINE, env={**os.environ, "NO_COLOR": "1"})
    assert done.stdout.split() == ["False", "False"]
