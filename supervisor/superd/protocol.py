"""Wire format v1 of the control socket: pure encode/decode, no I/O.

Every message is an 8-byte header (magic, version, kind, body length) followed
by one UTF-8 JSON object: a request of at most MAX_REQUEST bytes, a reply or
an event of at most MAX_REPLY bytes.
"""

from __future__ import annotations

import struct

from . import jsoncodec

# Not `typing.TYPE_CHECKING`: superctl imports this module on every run, and
# importing typing alone costs it more than the rest of its start-up work.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, TypeAlias

MAGIC = b"SD"
VERSION = 1
HEADER = struct.Struct("!2sBBI")
MAX_REQUEST = 1 << 20
MAX_REPLY = 64 << 20  # replies and events: a status of many instances is big


class Kind:
    """The kinds of message, as the header's kind byte holds them.

    Plain ints, not an IntEnum: superctl imports this module on every run,
    and importing enum costs it some 10 ms, over half of Python's own start-up.
    """

    REQUEST: Final = 1
    REPLY: Final = 2
    EVENT: Final = 3


# Every kind, derived from the class so that a new one cannot be left out
# (its upper-case names: the class also holds dunders, some of them ints).
KINDS = frozenset(value for name, value in vars(Kind).items() if name.isupper())

if TYPE_CHECKING:
    Message: TypeAlias = tuple[int, dict[str, Any]]


class FrameError(Exception):
    """The byte stream cannot be decoded; the connection must be closed."""


class TooLarge(FrameError):
    """A message to be sent is over the limit for its kind; nothing was encoded."""


def limit_of(kind: int) -> int:
    return MAX_REQUEST if kind == Kind.REQUEST else MAX_REPLY


# json.dumps(message, separators=(",", ":")), without importing json.
to_json = jsoncodec.dumps


def encode(kind: int, message: dict[str, Any]) -> bytes:
    return frame(kind, to_json(message))


def frame(kind: int, body_json: str) -> bytes:
    """The frame of a body that is already JSON text (ASCII: to_json escapes the rest)."""
    body = body_json.encode()
    if len(body) > limit_of(kind):
        raise TooLarge(f"body of {len(body)} bytes exceeds {limit_of(kind)}")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def parse_header(header: bytes, limit: int) -> tuple[int, int]:
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError("bad magic")
    if version != VERSION:
        raise FrameError(f"unsupported version {version}")
    if kind not in KINDS:
        raise FrameError(f"unknown kind {kind}")
    if length > limit:
        raise FrameError(f"body of {length} bytes exceeds {limit}")
    return kind, length


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        message = jsoncodec.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"body is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("body is not a JSON object")
    return message


class Decoder:
    """Incremental decoder: push bytes, take whole messages out.

    `limit` is the largest body accepted: MAX_REQUEST where requests arrive
    (the daemon), MAX_REPLY where replies and events do (clients).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._start = 0  # messages before this offset were taken already

    def feed(self, data: bytes) -> list[Message]:
        """Push data and return every complete message; FrameError on a bad frame."""
        self.push(data)
        messages = []
        while (message := self.next()) is not None:
            messages.append(message)
        return messages

    def push(self, data: bytes) -> None:
        # Drop what was taken only now, so taking one message never moves
        # the rest of a big buffer.
        del self._buffer[:self._start]
        self._start = 0
        self._buffer += data

    def next(self) -> Message | None:
        """The next complete message, or None until more bytes are pushed.

        The header is checked before any of the body is awaited, so an
        oversized length is refused without buffering the body.
        """
        available = len(self._buffer) - self._start
        if available < HEADER.size:
            return None
        kind, length = self._header()
        if available < HEADER.size + length:
            return None
        header_end = self._start + HEADER.size
        body = bytes(self._buffer[header_end:header_end + length])
        self._start = header_end + length
        return kind, parse_body(body)

    def has_message(self) -> bool:
        """A whole message is buffered; FrameError if its header is bad."""
        available = len(self._buffer) - self._start
        if available < HEADER.size:
            return False
        _, length = self._header()
        return available >= HEADER.size + length

    def _header(self) -> tuple[int, int]:
        header = bytes(self._buffer[self._start:self._start + HEADER.size])
        return parse_header(header, self.limit)

    @property
    def pending(self) -> int:
        """Bytes pushed and not yet taken as messages."""
        return len(self._buffer) - self._start
