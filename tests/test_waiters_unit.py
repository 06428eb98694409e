"""Waiters re-check only the instance that changed, yet call back exactly
when checking every instance after every change would."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from superd.waiters import Waiters


class Thing:
    """Stands in for an Instance: waiters only hash it and ask `done` of it."""

    def __init__(self) -> None:
        self.up = False


def is_up(thing: Any) -> bool:
    return bool(thing.up)


def test_calls_back_at_once_when_already_settled() -> None:
    waiters, calls = Waiters(), []
    thing = Thing()
    thing.up = True
    waiters.wait([thing], is_up, lambda: calls.append("now"))  # type: ignore[list-item]
    assert calls == ["now"]


def test_an_instance_that_settled_and_unsettled_counts_as_pending() -> None:
    waiters, calls = Waiters(), []
    a, b = Thing(), Thing()
    waiters.wait([a, b], is_up, lambda: calls.append("both"))  # type: ignore[list-item]
    a.up = True
    waiters.wake(a)  # type: ignore[arg-type]
    a.up = False
    waiters.wake(a)  # type: ignore[arg-type]
    b.up = True
    waiters.wake(b)  # type: ignore[arg-type]
    assert calls == []
    a.up = True
    waiters.wake(a)  # type: ignore[arg-type]
    assert calls == ["both"]
    waiters.wake(a)  # type: ignore[arg-type]
    assert calls == ["both"]  # once only


def test_callbacks_run_in_registration_order_and_may_wake_others() -> None:
    waiters, calls = Waiters(), []
    a, b = Thing(), Thing()

    def first() -> None:
        calls.append("first")
        b.up = True
        waiters.wake(b)  # type: ignore[arg-type]

    waiters.wait([a], is_up, first)  # type: ignore[list-item]
    waiters.wait([a], is_up, lambda: calls.append("second"))  # type: ignore[list-item]
    waiters.wait([b], is_up, lambda: calls.append("after b"))  # type: ignore[list-item]
    a.up = True
    waiters.wake(a)  # type: ignore[arg-type]
    assert calls == ["first", "after b", "second"]


@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), max_size=6),
       st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=40))
def test_matches_checking_everything_after_every_change(
        waits: list[list[int]], changes: list[tuple[int, bool]]) -> None:
    things = [Thing() for _ in range(6)]
    waiters, fired, expected = Waiters(), [], []
    open_waits = []
    for number, members in enumerate(waits):
        group = [things[i] for i in members]
        waiters.wait(group, is_up, lambda n=number: fired.append(n))  # type: ignore[misc]
        if all(is_up(t) for t in group):
            expected.append(number)
        else:
            open_waits.append((number, group))
    for index, up in changes:
        things[index].up = up
        waiters.wake(things[index])  # type: ignore[arg-type]
        for entry in list(open_waits):
            if all(is_up(t) for t in entry[1]):
                expected.append(entry[0])
                open_waits.remove(entry)
    assert fired == expected
