"""Ordering workers by `depends_on`: pure functions, no processes.

One walk of the graph lives here: config.py reports the cycles it finds, so
every order asked for at run time exists.
"""

from __future__ import annotations

from collections.abc import Mapping

Graph = Mapping[str, tuple[str, ...]]


def start_order(depends_on: Graph) -> list[str]:
    """Every worker after all it depends on; ties keep the config's order.

    ValueError names a cycle, if there is one (config.py has rejected them).
    """
    cycles = find_cycles(depends_on)
    if cycles:
        raise ValueError("dependency cycle: " + " -> ".join(cycles[0]))
    order: list[str] = []
    seen: set[str] = set()

    def place(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dependency in depends_on.get(name, ()):
            place(dependency)
        order.append(name)

    for name in depends_on:
        place(name)
    return order


def find_cycles(depends_on: Graph) -> list[list[str]]:
    """Each cycle met by a depth-first walk, written as the path that closes it."""
    cycles: list[list[str]] = []
    finished: set[str] = set()
    for root in depends_on:
        if root in finished:
            continue
        path, children = [root], [iter(depends_on[root])]
        while children:
            child = next(children[-1], None)
            if child is None:
                finished.add(path.pop())
                children.pop()
            elif child in path:
                cycles.append([*path[path.index(child):], child])
            elif child not in finished:
                path.append(child)
                children.append(iter(depends_on.get(child, ())))
    return cycles


def dependents(depends_on: Graph, name: str) -> list[str]:
    """The workers that list `name` directly in their depends_on."""
    return [other for other, needs in depends_on.items() if name in needs]
