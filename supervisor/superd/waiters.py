"""Callbacks held until a set of instances reaches a state.

Commands that reply later (start, stop, reload, shutdown) and dependency
ordering register a waiter.  A transition re-checks only the waiters of the
instance that moved, and only that instance: a `start all` of 10,000 must
not compare every instance on every one of their 10,000 transitions.
"""

from __future__ import annotations

from collections.abc import Callable

from .worker import Instance

Settled = Callable[[Instance], bool]


class Waiter:
    """Calls back once no instance is left that does not satisfy `done`."""

    def __init__(self, instances: list[Instance], done: Settled,
                 callback: Callable[[], None]) -> None:
        self.instances = instances
        self.done = done
        self.callback = callback
        self.pending = {instance for instance in instances if not done(instance)}

    def recheck(self, instance: Instance) -> None:
        if self.done(instance):
            self.pending.discard(instance)
        else:
            self.pending.add(instance)

    def recheck_all(self) -> None:
        self.pending = {instance for instance in self.instances if not self.done(instance)}


class Waiters:
    def __init__(self) -> None:
        # Insertion-ordered: waiters settled by one change call back in the
        # order they were registered.
        self._by_instance: dict[Instance, dict[Waiter, None]] = {}
        self._waiting: dict[Waiter, None] = {}

    def wait(self, instances: list[Instance], done: Settled,
             callback: Callable[[], None]) -> None:
        """Call back once every instance is done: now, or at a later wake()."""
        waiter = Waiter(instances, done, callback)
        if not waiter.pending:
            callback()
            return
        self._waiting[waiter] = None
        for instance in instances:
            self._by_instance.setdefault(instance, {})[waiter] = None

    def wake(self, instance: Instance | None = None) -> None:
        """After `instance` changed (a transition), or anything did (None):
        call back every waiter that has settled."""
        if instance is None:
            waiters = list(self._waiting)
            for waiter in waiters:
                waiter.recheck_all()
        else:
            waiters = list(self._by_instance.get(instance, ()))
            for waiter in waiters:
                waiter.recheck(instance)
        for waiter in waiters:
            # A callback may change states and so settle waiters itself.
            if not waiter.pending and waiter in self._waiting:
                self._forget(waiter)
                waiter.callback()

    def _forget(self, waiter: Waiter) -> None:
        del self._waiting[waiter]
        for instance in waiter.instances:
            mine = self._by_instance.get(instance)
            if mine is not None:
                mine.pop(waiter, None)
                if not mine:
                    del self._by_instance[instance]
