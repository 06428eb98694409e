"""JSON text both ways with CPython's C accelerator `_json`, not the json package.

superctl imports this module on every run, and `import json` would cost it
more than Python's own start-up: json.decoder and json.encoder import re,
which imports enum. `_json` is the C code that json.loads and json.dumps
(without indent) run themselves, so the answers are theirs, errors included:
only the whitespace around the document and the errors raised here are
Python, as in json.decoder. The json package is imported only on the way
to a JSONDecodeError, and where `_json` cannot do the work (an interpreter
other than CPython), instead of it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

WHITESPACE = " \t\n\r"  # JSON's, which json.decoder skips before and after a document


class LoadsDefaults:
    """What `_json.make_scanner` reads of a json.decoder.JSONDecoder, as
    json.loads makes it with no arguments. (The C scanner keeps its own memo.)"""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float  # float and int themselves select the C fast paths
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


try:
    from _json import encode_basestring_ascii, make_encoder, make_scanner

    # The context is duck-typed; typeshed names the scanner class as its type.
    scan_once = make_scanner(LoadsDefaults)  # type: ignore[arg-type]
    ACCELERATED = True
except (ImportError, AttributeError):
    # No _json, or one that wants more of a JSONDecoder than LoadsDefaults holds.
    ACCELERATED = False


def loads(text: str) -> Any:
    """json.loads(text): the same value, or the same JSONDecodeError (a ValueError)."""
    if not ACCELERATED:
        import json

        return json.loads(text)
    if text.startswith("\ufeff"):
        raise decode_error("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        value, end = scan_once(text, skip_whitespace(text, 0))
    except StopIteration as stop:  # the scanner's way to say that no value starts there
        raise decode_error("Expecting value", text, stop.value) from None
    except SystemError:
        # Before Python 3.12 the C scanner finds JSONDecodeError, to raise its
        # own errors (a missing delimiter, a bad escape), only if json.decoder
        # is imported already, and fails without it: json.loads imports it.
        import json

        return json.loads(text)
    end = skip_whitespace(text, end)
    if end != len(text):
        raise decode_error("Extra data", text, end)
    return value


def dumps(value: object) -> str:
    """json.dumps(value, separators=(",", ":")), to the byte: ASCII only."""
    if not ACCELERATED:
        import json

        return json.dumps(value, separators=(",", ":"))
    # A new encoder per call, as json makes one: a failed call leaves its
    # markers dirty. Arguments by position: by keyword, they cost a third more.
    encoder = make_encoder(
        {},  # markers: the containers being encoded, to refuse circular references
        unserializable,  # default
        encode_basestring_ascii,  # encoder of strings, as ensure_ascii=True
        None, ":", ",",  # indent, key_separator, item_separator
        False, False, True,  # sort_keys, skipkeys, allow_nan
    )
    return "".join(encoder(value, 0))


def skip_whitespace(text: str, index: int) -> int:
    """The index of the first non-whitespace character from index on (or the end)."""
    return len(text) - len(text[index:].lstrip(WHITESPACE))


def decode_error(message: str, text: str, index: int) -> ValueError:
    from json import JSONDecodeError  # imports re, on the way to an error only

    return JSONDecodeError(message, text, index)


def unserializable(value: object) -> object:
    """json.JSONEncoder.default: what JSON has no form for is a TypeError."""
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")
