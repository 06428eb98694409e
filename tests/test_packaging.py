"""superd installs beside supervisord without touching it: one fresh venv holds
both, each works (superctl as a script of its own, whose #! pip points at the
venv), and removing superd leaves supervisord whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

SUPERVISOR = "supervisor==4.3.0"
TIMEOUT = 600


def run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("coexist")
    made = run(sys.executable, "-m", "venv", folder / "venv", cwd=folder)
    assert made.returncode == 0, made.stderr
    pip = folder / "venv" / "bin" / "pip"
    # Reachability first, so that a missing index skips instead of failing.
    probe = run(pip, "download", "--quiet", "--no-deps", "--dest", folder / "probe",
                SUPERVISOR, cwd=folder)
    if probe.returncode != 0:
        pytest.skip(f"package index unreachable: {probe.stderr.strip()[-200:]}")
    installed = run(pip, "install", "--quiet", REPO, SUPERVISOR, cwd=folder)
    assert installed.returncode == 0, installed.stderr
    return folder / "venv"


def test_superd_and_supervisord_share_a_venv(venv: Path) -> None:
    bin_dir, here = venv / "bin", venv.parent
    supervisord = run(bin_dir / "supervisord", "--version", cwd=here)
    assert supervisord.returncode == 0 and supervisord.stdout.strip() == "4.3.0"
    superd = run(bin_dir / "superd", "--version", cwd=here)
    assert superd.returncode == 0 and superd.stdout.startswith("superd ")
    checked = run(bin_dir / "superd", "--check", "-c", REPO / "config" / "demo.yaml", cwd=here)
    assert checked.returncode == 0, checked.stderr
    # Both import packages are the real ones: supervisord's states, superd's states.
    probe = ("import supervisor.states, superd.states, supervisor.supervisord\n"
             "assert hasattr(supervisor.states, 'ProcessStates')\n"
             "assert superd.states.State.RUNNING.value == 'RUNNING'\n"
             "print(supervisor.__path__[0] != superd.__path__[0])\n")
    imported = run(bin_dir / "python", "-I", "-c", probe, cwd=here)
    assert imported.returncode == 0 and imported.stdout == "True\n", imported.stderr


def test_superd_installs_no_supervisor_package(venv: Path) -> None:
    shown = run(venv / "bin" / "pip", "show", "--files", "superd", cwd=venv.parent)
    assert shown.returncode == 0, shown.stderr
    files = [line.strip() for line in shown.stdout.split("Files:")[1].splitlines()]
    assert any(path.startswith("superd/") for path in files)
    assert not [path for path in files if path.startswith("supervisor")], files



def test_superctl_is_a_script_of_its_own_run_by_the_venvs_python(venv: Path) -> None:
    bin_dir, here = venv / "bin", venv.parent
    shebang = (bin_dir / "superctl").read_text().splitlines()[0]
    assert shebang.startswith("#!") and Path(shebang[2:]).parent == bin_dir, shebang
    missing = run(bin_dir / "superctl", "-s", here / "missing.sock", "status", cwd=here)
    assert missing.returncode == 4 and missing.stderr.startswith("superctl: cannot reach"), \
        missing.stderr
    helped = run(bin_dir / "superctl", "--help", cwd=here)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: superctl"), helped.stderr
    as_module = run(bin_dir / "python", "-m", "superd.cli", "--help", cwd=here)
    assert as_module.returncode == 0 and as_module.stdout == helped.stdout, as_module.stderr

def test_removing_superd_leaves_supervisord_whole(venv: Path) -> None:
    removed = run(venv / "bin" / "pip", "uninstall", "--yes", "--quiet", "superd",
                  cwd=venv.parent)
    assert removed.returncode == 0, removed.stderr
    assert not (venv / "bin" / "superctl").exists()
    conf = run(venv / "bin" / "echo_supervisord_conf", cwd=venv.parent)
    assert conf.returncode == 0 and "[supervisord]" in conf.stdout
    imported = run(venv / "bin" / "python", "-I", "-c",
                   "import supervisor.supervisord, supervisor.states", cwd=venv.parent)
    assert imported.returncode == 0, imported.stderr
