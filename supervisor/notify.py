"""The sending side of systemd's sd_notify protocol (superd -> systemd)."""

from __future__ import annotations

import os
import socket


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
