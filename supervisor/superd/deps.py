"""Ordering workers by `depends_on`: pure functions, no processes.

config.py has already rejected unknown names and cycles, so every order asked
for here exists.
"""

from __future__ import annotations

from collections.abc import Mapping


def start_order(depends_on: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Every worker after all it depends on; ties keep the config's order."""
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str, path: tuple[str, ...]) -> None:
        if name in placed:
            return
        if name in path:
            raise ValueError("dependency cycle: " + " -> ".join((*path, name)))
        for dependency in depends_on.get(name, ()):
            place(dependency, (*path, name))
        placed.add(name)
        order.append(name)

    for name in depends_on:
        place(name, ())
    return order


def dependents(depends_on: Mapping[str, tuple[str, ...]], name: str) -> list[str]:
    """The workers that list `name` directly in their depends_on."""
    return [other for other, needs in depends_on.items() if name in needs]
