"""tests/bench/compare.py end to end, small: `--quick --skip-supervisord` against
the installed superd gives a number for every figure and leaves nothing behind.
Set SUPERD_SKIP_BENCH to skip it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.skipif(bool(os.environ.get("SUPERD_SKIP_BENCH")),
                                reason="SUPERD_SKIP_BENCH is set")

FIGURES = {
    "restart", "cold_start", "start_all", "stop_all", "reap_storm", "reap_zombies",
    "idle_wakeups", "pss_small", "pss_big", "pss_helper",
    *(f"{what}_{size}" for size in ("small", "big")
      for what in ("status_raw", "status_cpu", "ping_raw", "ping_cpu", "ctl_status")),
}
WITH_FLOOR = {"restart", "ctl_status_small", "ctl_status_big"}


def test_quick_bench_measures_every_figure_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "bench" / "compare.py"),
                           "--quick", "--skip-supervisord", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, env=env,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == FIGURES
    for key, figure in figures.items():
        for contender in ("superd", *(["floor"] if key in WITH_FLOOR else [])):
            values = figure[contender]
            assert values["samples"], (key, contender)
            assert all(isinstance(values[name], int | float) for name in values
                       if name != "samples"), (key, contender, values)
        assert "supervisord" not in figure
    assert figures["reap_zombies"]["superd"]["max"] == 0
    assert report["cleanup"]["zombies"] == []
    assert report["cleanup"]["leftover_processes"] == []
    assert "no zombie, no leftover process" in done.stdout
