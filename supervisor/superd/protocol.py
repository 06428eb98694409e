"""Wire format v1 of the control socket: pure encode/decode, no I/O.

Every message is an 8-byte header (magic, version, kind, body length) followed
by one UTF-8 JSON object of at most MAX_BODY bytes.
"""

from __future__ import annotations

import json
import struct
from enum import IntEnum
from typing import Any

MAGIC = b"SD"
VERSION = 1
HEADER = struct.Struct("!2sBBI")
MAX_BODY = 1 << 20


class Kind(IntEnum):
    REQUEST = 1
    REPLY = 2
    EVENT = 3


class FrameError(Exception):
    """The byte stream cannot be decoded; the connection must be closed."""


def encode(kind: Kind, message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_BODY:
        raise FrameError(f"body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def parse_header(header: bytes) -> tuple[Kind, int]:
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError("bad magic")
    if version != VERSION:
        raise FrameError(f"unsupported version {version}")
    if kind not in Kind.__members__.values():
        raise FrameError(f"unknown kind {kind}")
    if length > MAX_BODY:
        raise FrameError(f"body of {length} bytes exceeds {MAX_BODY}")
    return Kind(kind), length


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"body is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("body is not a JSON object")
    return message


class Decoder:
    """Incremental decoder: feed bytes, get whole messages back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Kind, dict[str, Any]]]:
        """Return every complete message; raise FrameError on a bad frame.

        The header is checked before any of the body is awaited, so an
        oversized length is refused without buffering the body.
        """
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            kind, length = parse_header(bytes(self._buffer[: HEADER.size]))
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append((kind, parse_body(bytes(self._buffer[HEADER.size : end]))))
            del self._buffer[:end]
        return messages

    @property
    def pending(self) -> int:
        return len(self._buffer)
