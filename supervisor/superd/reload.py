"""What a reload changes: the pure diff of the running config and a new one.

Instances are compared by name and by the WorkerConfig they would run with.
`numprocs` only decides how many instances there are, so a change from 2 to 3
adds `web:2` and leaves `web:0` and `web:1` alone.  A change across 1 renames
the instances (`web` <-> `web:0`...), so the old names are removed and the new
ones added.

Parts of the config that cannot be changed under a running daemon (the
`sockets` section, the pidfile, the daemon's own log file) keep their running
values; the plan lists them under `not_applied` so the user is told.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import Config, WorkerConfig

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any

RESTART_NEEDED = "cannot be applied live; restart superd"


@dataclass
class Plan:
    config: Config  # what the daemon runs with after the reload
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rebind: bool = False  # the control socket's path changed
    daemon_changed: list[str] = field(default_factory=list)  # daemon.* keys applied live
    not_applied: list[str] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        """The wire form of the plan (the reply to `reload`)."""
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "unchanged": self.unchanged, "daemon": self.daemon_changed,
                "not_applied": self.not_applied}


def instance_configs(config: Config) -> dict[str, WorkerConfig]:
    """Every instance name, in config order, with the worker config it runs."""
    return {name: worker for worker in config.workers.values()
            for name in worker.instance_names()}


def same_instance(old: WorkerConfig, new: WorkerConfig) -> bool:
    # numprocs is already in the instance's name; comparing it again would
    # restart web:0 when only web:2 is being added.
    return dataclasses.replace(old, numprocs=new.numprocs) == new


def diff(old: Config, new: Config) -> Plan:
    effective, daemon_changed, not_applied = _keep_fixed_parts(old, new)
    plan = Plan(effective, daemon_changed=daemon_changed, not_applied=not_applied,
                rebind=old.daemon.socket != effective.daemon.socket)
    before, after = instance_configs(old), instance_configs(effective)
    for name, worker in after.items():
        if name not in before:
            plan.added.append(name)
        elif same_instance(before[name], worker):
            plan.unchanged.append(name)
        else:
            plan.changed.append(name)
    plan.removed = [name for name in before if name not in after]
    return plan


def _keep_fixed_parts(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The new config with what cannot change live put back to the running values."""
    not_applied = []
    daemon = new.daemon
    for key in ("pidfile", "log_file"):
        if getattr(old.daemon, key) != getattr(daemon, key):
            not_applied.append(f"daemon.{key}: {RESTART_NEEDED}")
            daemon = dataclasses.replace(daemon, **{key: getattr(old.daemon, key)})
    if old.sockets != new.sockets:
        not_applied.append(f"sockets: {RESTART_NEEDED}")
    changed = [f.name for f in dataclasses.fields(daemon)
               if getattr(old.daemon, f.name) != getattr(daemon, f.name)]
    effective = dataclasses.replace(new, daemon=daemon, sockets=old.sockets)
    return effective, [f"daemon.{key}" for key in changed], not_applied


def missing_sockets(plan: Plan) -> list[str]:
    """Sockets that workers about to start need but the running daemon lacks."""
    workers = plan.config.workers.values()
    wanted = {name for worker in workers for name in worker.sockets}
    return sorted(wanted - set(plan.config.sockets))


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human lines for a reload result: `added: a, b` ...; `no changes` when empty."""
    lines = []
    for key, label in (("added", "added"), ("removed", "removed"), ("changed", "changed"),
                       ("daemon", "daemon")):
        names = result.get(key) or []
        if names:
            lines.append(f"{label}: {', '.join(str(n) for n in names)}")
    lines.extend(f"not applied: {note}" for note in result.get("not_applied") or [])
    return lines or ["no changes"]


class ReloadRefused(Exception):
    """Nothing was changed; code and message go into the error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
