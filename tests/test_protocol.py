from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superd.protocol import HEADER, MAX_BODY, Decoder, FrameError, Kind, encode

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
    decoder = Decoder()
    decoded = []
    for start in range(0, len(stream), chunk):
        decoded.extend(decoder.feed(stream[start:start + chunk]))
    assert decoded == [(Kind.EVENT, message) for message in batch]
    assert decoder.pending == 0


@pytest.mark.parametrize("header", [
    HEADER.pack(b"XX", 1, 1, 2),
    HEADER.pack(b"SD", 2, 1, 2),
    HEADER.pack(b"SD", 1, 9, 2),
    HEADER.pack(b"SD", 1, 1, MAX_BODY + 1),
])
def test_bad_headers_are_refused_before_the_body(header: bytes) -> None:
    with pytest.raises(FrameError):
        Decoder().feed(header)


@pytest.mark.parametrize("body", [b"[]", b"1", b"{", b"\xff\xfe", b'"text"'])
def test_bodies_that_are_not_objects_are_refused(body: bytes) -> None:
    with pytest.raises(FrameError):
        Decoder().feed(HEADER.pack(b"SD", 1, 1, len(body)) + body)


def test_largest_body_is_accepted_and_one_more_byte_is_not() -> None:
    filler = "x" * (MAX_BODY - len('{"a":""}'))
    frame = encode(Kind.REPLY, {"a": filler})
    assert len(frame) == HEADER.size + MAX_BODY
    assert Decoder().feed(frame) == [(Kind.REPLY, {"a": filler})]
    with pytest.raises(FrameError):
        encode(Kind.REPLY, {"a": filler + "x"})
