"""superd.jsoncodec agrees with the json module: the same text out, the same
values in, the same errors for what is not JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superd import jsoncodec
from superd.protocol import FrameError, parse_body

# Every code point, lone surrogates included (json escapes them both ways).
ANY_TEXT = st.text(st.characters(blacklist_categories=()))
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**64, max_value=2**200)
    | st.floats() | ANY_TEXT | st.sampled_from(["\\", '"', "\n", "\x00", "\x7f", "é", "😀"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=5),
    max_leaves=30,
)
# The ways json.dumps writes a document, all of which json.loads reads.
STYLES = st.sampled_from([
    {}, {"separators": (",", ":")}, {"indent": 2}, {"ensure_ascii": False},
    {"indent": "\t", "ensure_ascii": False},
])
# What JSON text is made of, to break documents with.
JSON_CHARS = st.text(st.sampled_from(list('{}[]":, \t\n\r0123456789.eE+-\\/ubfnrtalsNIy\x01')),
                     max_size=3)


def as_text(value: object) -> str:
    """A decoded value as text: tells 1 from 1.0 and True, -0.0 from 0.0, NaN from NaN."""
    return json.dumps(value)


def outcome(loads: object, text: str) -> tuple[str, str]:
    """What a loads function makes of text: its value as text, or its error."""
    assert callable(loads)
    try:
        return "value", as_text(loads(text))
    except json.JSONDecodeError as exc:
        return "JSONDecodeError", str(exc)


@settings(max_examples=500)
@given(JSON_VALUES)
def test_dumps_writes_what_json_dumps_writes(value: object) -> None:
    assert jsoncodec.dumps(value) == json.dumps(value, separators=(",", ":"))


@settings(max_examples=500)
@given(JSON_VALUES, STYLES)
def test_loads_reads_what_json_loads_reads(value: object, style: dict[str, object]) -> None:
    text = json.dumps(value, **style)
    assert as_text(jsoncodec.loads(text)) == as_text(json.loads(text))


@settings(max_examples=1000)
@given(JSON_VALUES, st.integers(min_value=0), st.integers(min_value=0, max_value=3), JSON_CHARS,
       st.sampled_from(["", " ", "\n\t", "\ufeff"]))
def test_broken_documents_fail_as_json_loads_fails(
    value: object, at: int, cut: int, junk: str, edge: str
) -> None:
    text = json.dumps(value, indent=1)
    at %= len(text) + 1
    broken = edge + text[:at] + junk + text[at + cut:] + edge[::-1]
    assert outcome(jsoncodec.loads, broken) == outcome(json.loads, broken)


@pytest.mark.parametrize("text", [
    "", " ", "{", '{"a" 1}', '{"a": }', "[1,]", "[1 2]", '{"a":1} x', "{} {}", '"\\x"',
    '"\\u12"', '"\x01"', "nul", "-", "1e", "\ufeff{}", "{'a': 1}", "NaN x",
])
def test_bad_json_is_a_json_decode_error_as_json_says(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as codec_error:
        jsoncodec.loads(text)
    with pytest.raises(json.JSONDecodeError) as json_error:
        json.loads(text)
    assert str(codec_error.value) == str(json_error.value)
    with pytest.raises(FrameError, match="^body is not JSON: ") as frame_error:
        parse_body(text.encode())
    assert str(frame_error.value) == f"body is not JSON: {json_error.value}"


@pytest.mark.parametrize(("body", "error"), [
    (b'{"a" 1}', "body is not JSON: Expecting ':' delimiter: line 1 column 6 (char 5)"),
    (b'{"a": "\\x"}', "body is not JSON: Invalid \\escape: line 1 column 8 (char 7)"),
    (b'{"a": 1} x', "body is not JSON: Extra data: line 1 column 10 (char 9)"),
    (b"[1]", "body is not a JSON object"),
])
def test_bad_json_before_json_is_ever_imported_is_a_frame_error(body: bytes, error: str) -> None:
    # Before Python 3.12 the C scanner raises its own errors only once
    # json.decoder is imported, which superctl and the daemon never do first.
    script = (
        "import sys\n"
        "from superd.protocol import FrameError, parse_body\n"
        "assert 'json' not in sys.modules\n"
        "try:\n"
        f"    parse_body({body!r})\n"
        "except FrameError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, error + "\n", "")


def test_unserializable_values_are_the_type_error_json_raises() -> None:
    with pytest.raises(TypeError, match="^Object of type set is not JSON serializable$"):
        jsoncodec.dumps({"a": {1}})
    with pytest.raises(ValueError, match="^Circular reference detected$"):
        loop: list[object] = []
        loop.append(loop)
        jsoncodec.dumps(loop)


def test_this_python_takes_the_c_path() -> None:
    assert jsoncodec.ACCELERATED


@given(JSON_VALUES)
def test_without_the_accelerator_the_json_module_does_the_same(value: object) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jsoncodec, "ACCELERATED", False)
        text = jsoncodec.dumps(value)
        assert text == json.dumps(value, separators=(",", ":"))
        assert as_text(jsoncodec.loads(text)) == as_text(json.loads(text))


def test_encoding_and_decoding_import_neither_json_nor_re() -> None:
    script = (
        "import sys\n"
        "from superd import jsoncodec\n"
        "text = jsoncodec.dumps({'id': 1, 'cmd': 'status', 'args': {'names': ['wéb', 2.5]}})\n"
        "assert jsoncodec.loads(text)['args']['names'] == ['wéb', 2.5]\n"
        "print(sorted({'json', 're', 'enum'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")
