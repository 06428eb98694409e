"""Worker output line by line, through real daemons: `timestamps`, `console`
(superd's own stdout and stderr in the foreground) and `file: false`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from support import DEADLINE, Superd, wait_for

PY = sys.executable
STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d) (.*)$")


def worker(code: str, **keys: object) -> dict[str, object]:
    return {"command": [PY, "-c", code], "startsecs": 0, "autorestart": "never", **keys}


def stamped_lines(path: Path) -> list[tuple[float, bytes]]:
    """Each line's stamp (as epoch seconds) and text; every line must have one."""
    found = []
    for line in path.read_bytes().splitlines():
        match = STAMP.match(line)
        assert match, line
        found.append((datetime.fromisoformat(match[1].decode()).timestamp(), match[2]))
    return found


def test_timestamps_start_every_line_with_the_time_superd_read_it(superd: Superd) -> None:
    code = ("import os, time\n"
            "os.write(1, b'one\\ntwo\\nthr')\n"  # a part line...
            "time.sleep(0.1)\n"
            "os.write(1, b'ee\\n')\n"  # ...completed soon: one line, one stamp
            "os.write(1, b'waiting')\n"  # held, then written alone after a while
            "time.sleep(2)\n"
            "os.write(1, b'bye\\n')\n")
    began = time.time()
    superd.start({"a": worker(code, stdout={"timestamps": True})})
    superd.wait_state("a", "EXITED")
    lines = stamped_lines(superd.log_file("a"))
    assert [text for _, text in lines] == [b"one", b"two", b"three", b"waiting", b"bye"]
    assert all(began - 1 <= when <= time.time() for when, _ in lines)
    assert lines[3][0] + 1.5 < lines[4][0]  # `waiting` was written before `bye` came
    # The tail shows the stamped lines, as the file holds them.
    tail = superd.call("logs", {"name": "a", "lines": 2})["data"]
    assert re.fullmatch(r"\S+ waiting\n\S+ bye\n", tail)


def test_without_timestamps_a_part_line_is_written_as_it_came(superd: Superd) -> None:
    code = "import os; os.write(1, b'abc'); os.write(2, b'no newline at all')"
    superd.start({"a": worker(code, stdout={"console": True}, stderr={"timestamps": True})})
    superd.wait_state("a", "EXITED")
    assert superd.log_file("a").read_bytes() == b"abc"  # flushed at exit, unchanged
    [(_, text)] = stamped_lines(superd.log_file("a", "err"))
    assert text == b"no newline at all"


def test_console_lines_go_to_superds_stdout_and_stderr_whole(superd: Superd) -> None:
    # Two instances write long lines in small pieces at once: on the console
    # each line must still come out whole, after its instance's prefix.
    code = ("import os, sys\n"
            "tag = os.environ['SUPERD_INSTANCE'].encode()\n"
            "for i in range(300):\n"
            "    line = tag * 200 + b' %d\\n' % i\n"
            "    for start in range(0, len(line), 37):\n"
            "        os.write(1, line[start:start + 37])\n"
            "os.write(2, b'to stderr\\n')\n")
    superd.write_config({"a": worker(code, numprocs=2, stdout={"console": True},
                                     stderr={"console": True, "timestamps": True})})
    out, err = superd.folder / "stdout", superd.folder / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        daemon = subprocess.Popen([PY, "-m", "superd", "--foreground", "-c",
                                   str(superd.config_path)], env=superd.env, stdout=stdout,
                                  stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.read_bytes().count(b"\n") >= 600, what="600 console lines")
        wait_for(lambda: err.read_bytes().count(b"to stderr") >= 2, what="stderr lines")
    finally:
        daemon.terminate()
        assert daemon.wait(DEADLINE) == 0
    for line in out.read_bytes().splitlines():
        match = re.fullmatch(rb"a:(\d) \| (\d{200}) (\d+)", line)
        assert match and match[2] == match[1] * 200, line[:80]
    numbers = {(m[1], m[2]) for m in re.finditer(rb"^a:(\d) \| \d+ (\d+)$",
                                                  out.read_bytes(), re.M)}
    assert len(numbers) == 600  # every line of both, once
    console_errors = [line for line in err.read_bytes().splitlines()
                      if line.startswith(b"a:")]  # the rest is superd's own log
    assert len(console_errors) == 2
    assert all(re.fullmatch(rb"a:\d \| \S+ to stderr", line) for line in console_errors)
    # The files hold the lines too, without prefixes.
    assert superd.log_file("a:0").read_bytes().count(b"\n") == 300


def test_file_false_writes_no_file_and_can_still_be_followed(superd: Superd) -> None:
    code = ("import os, sys, time\n"
            "while True:\n"
            "    os.write(1, b'tick\\n'); time.sleep(0.05)\n")
    superd.start({"a": {"command": [PY, "-c", code], "startsecs": 0,
                        "stdout": {"file": False}}})
    superd.wait_state("a", "RUNNING")
    assert not superd.log_file("a").exists()
    assert superd.call("logs", {"name": "a"})["data"] == ""
    client = superd.client()
    try:
        client.result("logs", {"name": "a", "follow": True})
        assert client.next_event("log")["data"].startswith("tick")
    finally:
        client.close()


def test_a_part_line_held_at_a_reexec_is_written_once(superd: Superd) -> None:
    code = ("import os, sys, time\n"
            "os.write(1, b'held')\n"
            "time.sleep(3)\n"
            "os.write(1, b' and done\\n')\n"
            "time.sleep(600)\n")
    superd.start({"a": {"command": [PY, "-c", code], "startsecs": 0,
                        "stdout": {"timestamps": True}}})
    superd.wait_state("a", "RUNNING")
    wait_for(lambda: superd.status("a")["uptime"] > 0.1)
    assert superd.ctl("reexec").returncode == 0
    wait_for(lambda: b"and done" in superd.log_file("a").read_bytes(), what="the last line")
    assert [text for _, text in stamped_lines(superd.log_file("a"))] == [b"held", b" and done"]
