from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    Superd,
    alive,
    become_subreaper,
    pids_tagged,
    reap_adopted,
    wait_for,
    zombie_children,
)


@pytest.fixture(scope="session", autouse=True)
def subreaper() -> None:
    # The daemon double-forks; as a subreaper we adopt it and can reap it,
    # where PID 1 on these machines might leave it a zombie forever.
    become_subreaper()


@pytest.fixture
def superd(tmp_path: Path) -> Iterator[Superd]:
    """A real daemon in tmp_path; afterwards no process of it may remain."""
    daemon = Superd(tmp_path, uuid.uuid4().hex)
    try:
        yield daemon
    finally:
        problems = _teardown(daemon)
        assert not problems, problems


def _teardown(daemon: Superd) -> list[str]:
    problems = []
    pid = daemon.pid
    if pid is not None and alive(pid):
        try:
            wait_for(lambda: not zombie_children(pid), 5.0, "daemon to reap its children")
        except AssertionError:
            problems.append(f"daemon left zombies: {zombie_children(pid)}")
        try:
            daemon.stop()
        except AssertionError as exc:
            problems.append(str(exc))
    # A process on its way out (the keeper after a `shutdown`) gets a
    # deadline to go; one still there after it is a leftover.
    try:
        wait_for(lambda: not pids_tagged(daemon.tag), 5.0, "tagged processes to exit")
    except AssertionError:
        pass
    leftovers = pids_tagged(daemon.tag)
    for leftover in leftovers:
        try:
            os.kill(leftover, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leftovers:
        problems.append(f"processes left behind: {leftovers}")
    reap_adopted()
    return problems
