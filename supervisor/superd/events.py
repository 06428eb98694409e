"""Published events: their shapes, the bus that carries them, and the
control connections that subscribe to them.

Every event is a JSON object with an "event" kind and a "time" (epoch
seconds).  Kinds: "state" (every transition of an instance), "reload",
"log_error", "health" (an instance's healthcheck verdict changed), "memory"
(an instance stayed above max_memory and is restarted) and "reexec" (the
last event of an image: connections close).
A subscribing connection gets each event encoded once and queued; one that
still has SUBSCRIBER_LIMIT bytes of earlier events unread is disconnected
instead of being waited for, so a client that does not read never slows the
daemon or the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .control import Connection, encode_event

SUBSCRIBER_LIMIT = 256 << 10
GONE_STATES = frozenset({"EXITED", "BACKOFF", "FATAL", "STOPPED"})

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Event: TypeAlias = dict[str, Any]
    Listener: TypeAlias = Callable[[Event], None]


def state_event(name: str, old: str, new: str, pid: int | None,
                exit_status: int | None) -> Event:
    event: Event = {"event": "state", "name": name, "from": old, "to": new, "pid": pid,
                    "time": time.time()}
    if new in GONE_STATES:
        event["exit_status"] = exit_status
    return event


def reload_event(result: dict[str, Any]) -> Event:
    return {"event": "reload", "time": time.time(), **result}


def reexec_event(reason: str, reexecs: int, pid: int) -> Event:
    """superd is about to exec itself in place (reason: request, signal or crash)."""
    return {"event": "reexec", "reason": reason, "reexecs": reexecs, "pid": pid,
            "time": time.time()}


def log_error_event(name: str | None, path: str, message: str) -> Event:
    """A worker's (name) or the daemon's (None) log file could not be written."""
    return {"event": "log_error", "name": name, "path": path, "message": message,
            "time": time.time()}


def health_event(name: str, old: str | None, new: str, pid: int | None,
                 message: str) -> Event:
    """An instance's health went from old to new; message: the last probe's result."""
    return {"event": "health", "name": name, "from": old, "to": new, "pid": pid,
            "message": message, "time": time.time()}


def memory_event(name: str, pid: int | None, rss_bytes: int, limit_bytes: int) -> Event:
    """An instance's process group stayed above max_memory: it is restarted."""
    return {"event": "memory", "name": name, "pid": pid, "rss_bytes": rss_bytes,
            "max_memory": limit_bytes, "time": time.time()}


class EventBus:
    """Hands each published event to every listener, in subscription order."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it again."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)


class Subscribers:
    """The connections that asked for events; one listener on the bus."""

    def __init__(self, bus: EventBus) -> None:
        self._connections: list[Connection] = []
        bus.subscribe(self._deliver)

    def add(self, connection: Connection) -> None:
        self._connections.append(connection)
        connection.when_closed(lambda: self._forget(connection))

    def _forget(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    def _deliver(self, event: Event) -> None:
        if not self._connections:
            return
        frame = encode_event(event)
        if frame is None:
            return
        for connection in list(self._connections):
            connection.send_frame(frame, SUBSCRIBER_LIMIT)
