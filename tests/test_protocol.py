from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superd.protocol import (
    HEADER,
    MAX_REPLY,
    MAX_REQUEST,
    Decoder,
    FrameError,
    Kind,
    TooLarge,
    encode,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.text(), json_values, max_size=5)


def test_header_layout() -> None:
    frame = encode(Kind.REQUEST, {"id": 1})
    assert frame[:2] == b"SD" and frame[2] == 1 and frame[3] == 1
    assert int.from_bytes(frame[4:8], "big") == len(frame) - 8 == len(b'{"id":1}')


@given(st.lists(messages, max_size=5), st.integers(min_value=1, max_value=64))
def test_any_split_decodes_the_same_messages(batch: list[dict[str, object]], chunk: int) -> None:
    stream = b"".join(encode(Kind.EVENT, message) for message in batch)
    decoder = Decoder(MAX_REPLY)
    decoded = []
    for start in range(0, len(stream), chunk):
        decoded.extend(decoder.feed(stream[start:start + chunk]))
    assert decoded == [(Kind.EVENT, message) for message in batch]
    assert decoder.pending == 0


@pytest.mark.parametrize("header", [
    HEADER.pack(b"XX", 1, 1, 2),
    HEADER.pack(b"SD", 2, 1, 2),
    HEADER.pack(b"SD", 1, 9, 2),
    HEADER.pack(b"SD", 1, 1, MAX_REQUEST + 1),
])
def test_bad_headers_are_refused_before_the_body(header: bytes) -> None:
    with pytest.raises(FrameError):
        Decoder(MAX_REQUEST).feed(header)


@pytest.mark.parametrize("body", [b"[]", b"1", b"{", b"\xff\xfe", b'"text"'])
def test_bodies_that_are_not_objects_are_refused(body: bytes) -> None:
    with pytest.raises(FrameError):
        Decoder(MAX_REQUEST).feed(HEADER.pack(b"SD", 1, 1, len(body)) + body)


def test_largest_request_is_accepted_and_one_more_byte_is_not() -> None:
    filler = "x" * (MAX_REQUEST - len('{"a":""}'))
    frame = encode(Kind.REQUEST, {"a": filler})
    assert len(frame) == HEADER.size + MAX_REQUEST
    assert Decoder(MAX_REQUEST).feed(frame) == [(Kind.REQUEST, {"a": filler})]
    with pytest.raises(TooLarge):
        encode(Kind.REQUEST, {"a": filler + "x"})


@pytest.mark.parametrize("kind", [Kind.REPLY, Kind.EVENT])
def test_replies_and_events_may_be_64_mib(kind: int) -> None:
    filler = "x" * (MAX_REPLY - len('{"a":""}'))
    frame = encode(kind, {"a": filler})
    assert len(frame) == HEADER.size + MAX_REPLY
    assert Decoder(MAX_REPLY).feed(frame) == [(kind, {"a": filler})]
    with pytest.raises(TooLarge):
        encode(kind, {"a": filler + "x"})


def test_the_daemon_decoder_refuses_a_request_over_1_mib() -> None:
    header = HEADER.pack(b"SD", 1, 1, MAX_REQUEST + 1)
    with pytest.raises(FrameError):
        Decoder(MAX_REQUEST).feed(header)
    assert Decoder(MAX_REPLY).feed(header) == []  # a client waits for the body


def test_messages_are_taken_one_at_a_time() -> None:
    frames = [encode(Kind.REQUEST, {"id": n}) for n in range(3)]
    decoder = Decoder(MAX_REQUEST)
    decoder.push(b"".join(frames) + frames[0][:4])
    assert [decoder.next() for _ in range(4)] == [
        (Kind.REQUEST, {"id": 0}), (Kind.REQUEST, {"id": 1}), (Kind.REQUEST, {"id": 2}), None]
    assert decoder.pending == 4
    decoder.push(frames[0][4:])
    assert decoder.next() == (Kind.REQUEST, {"id": 0}) and decoder.pending == 0


def test_has_message_looks_without_taking_and_checks_the_header() -> None:
    frame = encode(Kind.REQUEST, {"id": 1})
    decoder = Decoder(MAX_REQUEST)
    decoder.push(frame[:-1])
    assert not decoder.has_message()
    decoder.push(frame[-1:])
    assert decoder.has_message() and decoder.has_message()
    assert decoder.next() == (Kind.REQUEST, {"id": 1}) and not decoder.has_message()
    decoder.push(HEADER.pack(b"XX", 1, 1, 2))
    with pytest.raises(FrameError):
        decoder.has_message()
