"""Instance names: the one place that builds them and reads them back.

A worker with `numprocs: 1` has one instance named after it (`web`); with
`numprocs: N > 1` its instances are `web:0` ... `web:N-1`.  On disk `:` is
written as `_` (`web_0.out.log`).
"""

from __future__ import annotations

SEPARATOR = ":"


def instance_name(worker: str, index: int, numprocs: int) -> str:
    return worker if numprocs == 1 else f"{worker}{SEPARATOR}{index}"


def instance_index(name: str) -> int:
    """The index an instance name carries (0 for a worker's only instance)."""
    _, separator, index = name.rpartition(SEPARATOR)
    return int(index) if separator else 0


def log_name(instance: str) -> str:
    """The instance name as used in default log file names."""
    return instance.replace(SEPARATOR, "_")
