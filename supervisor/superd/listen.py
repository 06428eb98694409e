"""The listening sockets of the `sockets:` section, bound once at start-up.

superd never accepts on them: it only holds them open for its whole life so
that workers (given them as fds 3, 4, ...) can come and go while the kernel
keeps queueing connections in the listen backlog.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from .config import SocketConfig


class ListenError(Exception):
    """A socket could not be bound; the message is one line for users."""


@dataclass
class Listener:
    name: str
    sock: socket.socket
    unix_path: str | None


def parse_listen(listen: str) -> tuple[int, str | tuple[str, int]]:
    """`tcp://HOST:PORT`, `tcp://[V6]:PORT`, `unix:///path` -> (family, address)."""
    if listen.startswith("unix://"):
        return socket.AF_UNIX, listen[len("unix://"):]
    rest = listen[len("tcp://"):]
    host, _, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def bind_one(config: SocketConfig) -> Listener:
    family, address = parse_listen(config.listen)
    sock = socket.socket(family, socket.SOCK_STREAM)
    unix_path = address if isinstance(address, str) else None
    try:
        if unix_path is not None:
            _remove_stale(unix_path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if unix_path is not None and config.mode is not None:
            os.chmod(unix_path, config.mode)
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {config.listen} (socket {config.name}): "
                          f"{reason}") from None
    return Listener(config.name, sock, unix_path)


def _remove_stale(path: str) -> None:
    """A socket file left by a dead daemon is taken over; anything else is kept."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
        finally:
            probe.close()
        raise OSError(0, "a live process already listens there")


class Listeners:
    """Owner of every listening socket: binds them all or none."""

    def __init__(self) -> None:
        self.by_name: dict[str, Listener] = {}

    def bind_all(self, sockets: dict[str, SocketConfig]) -> None:
        try:
            for config in sockets.values():
                self.by_name[config.name] = bind_one(config)
        except ListenError:
            self.close()
            raise

    def adopt(self, sockets: dict[str, SocketConfig], fds: dict[str, int]) -> None:
        """Take over the sockets an image before bound (a re-exec); bind any other."""
        for config in sockets.values():
            fd = fds.get(config.name)
            if fd is None:
                self.by_name[config.name] = bind_one(config)
                continue
            _, address = parse_listen(config.listen)
            unix_path = address if isinstance(address, str) else None
            self.by_name[config.name] = Listener(config.name, socket.socket(fileno=fd),
                                                 unix_path)

    def fds_by_name(self) -> dict[str, int]:
        return {name: listener.sock.fileno() for name, listener in self.by_name.items()}

    def fds(self, names: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self.by_name[name].sock.fileno() for name in names)

    def close(self) -> None:
        for listener in self.by_name.values():
            listener.sock.close()
            if listener.unix_path is not None:
                try:
                    os.unlink(listener.unix_path)
                except FileNotFoundError:
                    pass
        self.by_name.clear()
