"""Published events: their shapes, and the subscribers that receive them.

Every event is a JSON object with an "event" kind and a "time" (epoch
seconds).  Kinds: "state" (built by Supervisor.transition), "reload" and
"log_error" (built here).  A subscriber is one control connection; each event
is encoded once and queued on every subscriber's connection, and a subscriber
whose queue passes SUBSCRIBER_LIMIT is disconnected instead of being waited
for, so a client that does not read never slows the daemon or the others.
"""

from __future__ import annotations

import time
from typing import Any

from .control import Connection
from .protocol import Kind, encode

SUBSCRIBER_LIMIT = 256 << 10


def reload_event(result: dict[str, Any]) -> dict[str, Any]:
    return {"event": "reload", "time": time.time(), **result}


def log_error_event(name: str | None, path: str, message: str) -> dict[str, Any]:
    """A worker's (name) or the daemon's (None) log file could not be written."""
    return {"event": "log_error", "name": name, "path": path, "message": message,
            "time": time.time()}


class Subscribers:
    """The connections that asked for events; a Supervisor listener."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def add(self, connection: Connection) -> None:
        self.connections.append(connection)
        connection.on_close.append(lambda: self._forget(connection))

    def _forget(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.connections:
            return
        frame = encode(Kind.EVENT, event)
        for connection in list(self.connections):
            connection.send_frame(frame, SUBSCRIBER_LIMIT)
