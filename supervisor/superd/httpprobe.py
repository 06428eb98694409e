"""The URL an `http` healthcheck fetches: what it may be, and its parts."""

from __future__ import annotations

import re

# http only (a probe of a local service; no TLS), a host, an optional port,
# then the path and query sent as they are.
URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?(/[^\s#]*)?")


def split_url(url: str) -> tuple[str, int, str, str]:
    """(host to connect to, port, request target, Host header) of an http:// URL;
    ValueError if it is not one a probe can fetch."""
    match = URL.fullmatch(url)
    if match is None:
        raise ValueError(f"expected http://HOST[:PORT]/PATH, got {url!r}")
    host, port_text, target = match[1], match[2], match[3] or "/"
    port = int(port_text) if port_text else 80
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range 1..65535: {port}")
    header = host if port_text is None else f"{host}:{port}"
    return host.strip("[]"), port, target, header
