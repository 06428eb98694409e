"""The sending side of systemd's sd_notify protocol (superd -> systemd)."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable


def notify(message: str) -> bool:
    """Send one datagram to $NOTIFY_SOCKET; True if one was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def notify_ready() -> bool:
    return notify("READY=1")


def notify_reloading() -> bool:
    """Call before a reload; call notify_ready() once it is applied."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def notify_stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, if the watchdog is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    owner = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if owner and owner != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def status_summary(states: Iterable[str]) -> str:
    """One line for STATUS=, e.g. "5 running, 1 backoff"."""
    counts = Counter(state.lower() for state in states)
    if not counts:
        return "no workers"
    return ", ".join(f"{count} {state}" for state, count in sorted(
        counts.items(), key=lambda item: (-item[1], item[0])))


class SystemdNotifier:
    """superd's own side towards systemd: STATUS= on change and the watchdog."""

    def __init__(self, call_later: Callable[[float, Callable[[], None]], object]) -> None:
        self.call_later = call_later
        self.last_status = ""
        interval = watchdog_interval()
        if interval is not None:
            self._watchdog(interval)

    def _watchdog(self, interval: float) -> None:
        notify("WATCHDOG=1")
        self.call_later(interval, lambda: self._watchdog(interval))

    def status(self, states: Iterable[str]) -> None:
        summary = status_summary(states)
        if summary != self.last_status:
            self.last_status = summary
            notify(f"STATUS={summary}")
