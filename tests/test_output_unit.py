"""The parts of line-by-line output without a daemon: stamps, the console
writer, the marks that order merged tails, and how superctl prints them."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from superd import logfile
from superd.config import DEFAULT_LOG
from superd.lines import Stamps
from superd.logview import LogView


def test_stamps_are_rfc3339_local_time_with_microseconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: the minutes of the offset count
    time.tzset()
    try:
        stamp = Stamps().at(1796120807.013042).decode()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert stamp == "2026-12-01T15:56:47.013042+05:30 "
    assert datetime.fromisoformat(stamp.strip()).timestamp() == pytest.approx(1796120807.013042)


def test_marks_stay_few_and_order_lines_by_when_they_were_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) \
        -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    first = logfile.LogFile(str(tmp_path / "a.log"), DEFAULT_LOG)
    second = logfile.LogFile(str(tmp_path / "b.log"), DEFAULT_LOG)
    for log_file in (first, second):
        log_file.open()
    for n in range(200):  # a line each 20 ms, in turn
        now[0] += 0.02
        (first if n % 2 == 0 else second).write(b"line %d\n" % n)
    assert first.marks is not None and len(first.marks) <= 2 * logfile.MAX_MARKS
    merged = logfile.merged_tail([("a", first), ("b", second)], 10)
    assert [line for _, line in merged] == [b"line %d\n" % n for n in range(190, 200)]
    assert [name for name, _ in merged] == ["a", "b"] * 5


def test_a_file_without_marks_comes_first_in_file_order(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    old.write_bytes(b"written before superd\nstarted\n")
    before = logfile.LogFile(str(old), DEFAULT_LOG)
    before.open()
    fresh = logfile.LogFile(str(tmp_path / "new.log"), DEFAULT_LOG)
    fresh.open()
    fresh.write(b"new\n")
    merged = logfile.merged_tail([("new", fresh), ("old", before)], 5)
    assert merged == [("old", b"written before superd\n"), ("old", b"started\n"),
                      ("new", b"new\n")]


def test_several_instances_are_prefixed_padded_and_coloured(
        capsys: pytest.CaptureFixture[str]) -> None:
    view = LogView(["web:0", "db"], colour=False)
    view.show_lines([["db", "ready\n"], ["web:0", "GET /\n"]])
    view.show_chunk("web:0", "half a ")
    view.show_chunk("db", "whole\n")
    view.show_chunk("web:0", "line\nand ")
    view.finish()
    assert capsys.readouterr().out == ("db    | ready\nweb:0 | GET /\ndb    | whole\n"
                                       "web:0 | half a line\nweb:0 | and \n")
    LogView(["a", "b"], colour=True).show_lines([["b", "x\n"]])
    assert capsys.readouterr().out == "\x1b[32mb\x1b[0m | x\n"


def test_one_instance_is_printed_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    view = LogView(["web"], colour=True)
    view.show_lines([["web", "a\n"]])
    view.show_chunk("web", "part")
    view.finish()
    assert capsys.readouterr().out == "a\npart"


def test_the_console_never_blocks_and_drops_what_does_not_fit(tmp_path: Path) -> None:
    from superd.lines import CONSOLE_BUFFER, Console
    from superd.loop import Loop

    read_end, write_end = os.pipe()
    loop = Loop()
    try:
        console = Console(loop, write_end, "test pipe")
        line = b"x" * 1023 + b"\n"
        for _ in range(2 * CONSOLE_BUFFER // len(line)):  # more than the pipe and the buffer
            console.write(line)
        assert console.dropped > 0
        assert len(console.pending()) <= CONSOLE_BUFFER
        data = os.read(read_end, 1 << 16)
        assert data.startswith(line)
        console.close()
    finally:
        loop.close()
        os.close(read_end)
        os.close(write_end)
