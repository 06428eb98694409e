"""The chaos soak, short: 300 workers, 20 s of kills, restarts, reloads and
hostile clients; then all RUNNING, no zombie, descriptors and memory flat.
The long run is `python tests/soak/chaos.py --seconds 300`."""

from __future__ import annotations

from soak.chaos import run_soak
from support import Superd

RSS_GROWTH_LIMIT = 32 << 20


def test_short_chaos_soak(superd: Superd) -> None:
    report = run_soak(superd, seconds=20.0, workers=300, seed=7)
    print("\n".join(report.lines()))
    assert report.start is not None and report.end is not None
    assert report.kills > 50 and report.reloads > 0 and report.abandoned > 0
    assert report.pipelined > 0 and report.user_restarts > 0
    assert report.end.running == report.workers and report.end.zombies == 0
    assert report.end.fds <= report.start.fds
    assert report.end.rss_bytes - report.start.rss_bytes < RSS_GROWTH_LIMIT
