"""Callbacks held until a set of instances reaches a state.

Commands that reply later (start, stop, reload, shutdown) and dependency
ordering register a waiter; every transition wakes the settled ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .worker import Instance

Settled = Callable[[Instance], bool]


@dataclass
class Waiter:
    """Calls back once every instance satisfies `done`."""

    instances: list[Instance]
    done: Settled
    callback: Callable[[], None]

    def settled(self) -> bool:
        return all(self.done(instance) for instance in self.instances)


class Waiters:
    def __init__(self) -> None:
        self._waiting: list[Waiter] = []

    def wait(self, instances: list[Instance], done: Settled,
             callback: Callable[[], None]) -> None:
        """Call back once every instance is done: now, or at a later wake()."""
        waiter = Waiter(instances, done, callback)
        if waiter.settled():
            callback()
        else:
            self._waiting.append(waiter)

    def wake(self) -> None:
        """Call back every waiter that has settled (after any transition)."""
        settled = [waiter for waiter in self._waiting if waiter.settled()]
        for waiter in settled:
            # A callback may change states and so settle waiters itself.
            if waiter in self._waiting:
                self._waiting.remove(waiter)
                waiter.callback()
