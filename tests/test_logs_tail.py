"""The tail of a log file, as pure functions: property tests against splitlines."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superd import logfile as logs

texts = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n\n", b"\xff", b"x" * 70]),
                 max_size=60).map(b"".join)


def expected_tail(data: bytes, lines: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""


@given(texts, st.integers(0, 30))
def test_keep_last_lines_matches_splitlines(data: bytes, lines: int) -> None:
    assert logs.keep_last_lines(data, lines) == expected_tail(data, lines)


@settings(max_examples=50)
@given(texts, st.integers(0, 30), st.integers(1, 64))
def test_tail_file_reads_backwards_in_blocks(tmp_path_factory: pytest.TempPathFactory,
                                             data: bytes, lines: int, block: int) -> None:
    path = tmp_path_factory.mktemp("tail") / "f.log"
    path.write_bytes(data)
    # Tiny blocks: lines straddle block boundaries.
    assert logs.tail_file(str(path), lines, 1 << 20, block) == expected_tail(data, lines)


def test_tail_file_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    path.write_bytes(b"y" * 100_000)  # one huge line
    assert len(logs.tail_file(str(path), 1, 4096)) == 4096
    assert logs.tail_file(str(tmp_path / "missing"), 5, 4096) == b""
