"""Worker output end to end: capture, rotation, tail, follow, reopen, write errors."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from superd.protocol import Kind
from support import DEADLINE, Client, Superd, small_disk, wait_for

PY = sys.executable
# Numbered lines, one every `pause` seconds, forever.
TICKER = ("import sys, time\n"
          "i = 0\n"
          "while True:\n"
          "    i += 1\n"
          "    sys.stdout.write(f'line {i}\\n'); sys.stdout.flush()\n"
          "    time.sleep(float(sys.argv[1]))\n")


def worker(command: list[str], **keys: object) -> dict[str, object]:
    return {"command": command, "startsecs": 0, "autorestart": "never", **keys}


def ticker(pause: float = 0.01, **keys: object) -> dict[str, object]:
    return worker([PY, "-c", TICKER, str(pause)], **keys)


def line_numbers(text: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]


def test_stdout_and_stderr_go_to_separate_files(superd: Superd) -> None:
    script = "import sys; print('to out'); print('to err', file=sys.stderr)"
    superd.start({"a": worker([PY, "-c", script])})
    superd.wait_state("a", "EXITED")
    assert superd.log_file("a", "out").read_text() == "to out\n"
    assert superd.log_file("a", "err").read_text() == "to err\n"


def test_merge_sends_stderr_to_the_stdout_file(superd: Superd) -> None:
    script = "import sys; print('one', flush=True); print('two', file=sys.stderr)"
    superd.start({"a": worker([PY, "-c", script], stderr={"merge": True})})
    superd.wait_state("a", "EXITED")
    assert superd.log_file("a", "out").read_text() == "one\ntwo\n"
    assert not superd.log_file("a", "err").exists()


def test_output_of_a_worker_that_exits_at_once_is_complete(superd: Superd) -> None:
    # More than a default pipe holds, written as the worker races to exit.
    superd.start({"a": worker(["seq", "1", "50000"])})
    superd.wait_state("a", "EXITED")
    # Complete as soon as the exit is reported: drained at reap time.
    text = superd.log_file("a", "out").read_text()
    assert text == "".join(f"{i}\n" for i in range(1, 50001))


def test_logs_n_gives_exactly_the_last_lines(superd: Superd) -> None:
    superd.start({"a": worker(["seq", "1", "1000"]), "b": worker(["seq", "1", "3"])})
    superd.wait_state("a", "EXITED")
    superd.wait_state("b", "EXITED")
    result = superd.ctl("logs", "a", "-n", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "996\n997\n998\n999\n1000\n"
    assert superd.ctl("logs", "b").stdout == "1\n2\n3\n"  # fewer than asked: all
    assert superd.call("logs", {"name": "a", "lines": 0})["data"] == ""
    default = superd.call("logs", {"name": "a"})["data"]
    assert default.splitlines() == [str(i) for i in range(951, 1001)]


def test_logs_stderr_and_bad_names(superd: Superd) -> None:
    script = "import sys; print('e1\\ne2', file=sys.stderr)"
    superd.start({"a": worker([PY, "-c", script]), "many": worker(["true"], numprocs=2)})
    superd.wait_state("a", "EXITED")
    assert superd.ctl("logs", "a", "--stderr", "-n", "1").stdout == "e2\n"
    result = superd.ctl("logs", "nope")
    assert result.returncode == 1 and "nope" in result.stderr and not result.stdout
    assert "Traceback" not in result.stderr
    client = superd.client()
    try:
        # On the wire, `name` is one instance; `names` takes several.
        for name in ("many", "all"):
            assert client.call("logs", {"name": name})["error"]["code"] == "bad_args"
        reply = client.call("logs", {"names": "a"})
        assert reply["error"]["code"] == "bad_args"
        reply = client.call("logs", {"name": "a", "lines": -1})
        assert reply["error"]["code"] == "bad_args"
        reply = client.call("logs", {"name": "a", "stream": "both"})
        assert reply["error"]["code"] == "bad_args"
    finally:
        client.close()


def rotated_files(path: Path) -> list[Path]:
    """Oldest first: FILE.N ... FILE.1 FILE."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def test_rotation_keeps_backups_and_loses_no_byte(superd: Superd) -> None:
    # Odd-sized writes so rotation boundaries fall inside writes and lines.
    script = ("import os, sys\n"
              "data = b''.join(b'%06d ' % i + b'x' * (i % 37) + b'\\n' for i in range(600))\n"
              "open(sys.argv[1], 'wb').write(data)\n"
              "for start in range(0, len(data), 333):\n"
              "    os.write(1, data[start:start + 333])\n")
    expected_path = superd.folder / "expected"
    superd.start({"a": worker([PY, "-c", script, str(expected_path)],
                              stdout={"maxbytes": "1KB", "backups": 3})})
    superd.wait_state("a", "EXITED")
    data = expected_path.read_bytes()
    out = superd.log_file("a", "out")
    files = rotated_files(out)
    assert [f.name for f in files] == [f"{out.name}.{i}" for i in (3, 2, 1)] + [out.name]
    # Each file was cut at its last line boundary before 1 KB: whole lines only.
    for rotated in files[:-1]:
        content = rotated.read_bytes()
        assert 1024 - 50 < len(content) <= 1024 and content.endswith(b"\n")
    kept = b"".join(f.read_bytes() for f in files)
    assert kept == data[-len(kept):]  # nothing lost in between, nothing repeated
    assert data[-len(kept) - 1:-len(kept)] == b"\n"  # the oldest file starts a line
    # The tail reaches into the backups when the current file is short.
    tail = superd.call("logs", {"name": "a", "lines": 20})["data"].encode()
    assert tail == b"".join(data.splitlines(keepends=True)[-20:])


def test_a_line_longer_than_maxbytes_alone_is_split_at_maxbytes(superd: Superd) -> None:
    script = "import os; os.write(1, b'short\\n' + b'y' * 3000 + b'\\nend\\n')"
    superd.start({"a": worker([PY, "-c", script], stdout={"maxbytes": "1KB", "backups": 5})})
    superd.wait_state("a", "EXITED")
    files = rotated_files(superd.log_file("a"))
    contents = [f.read_bytes() for f in files]
    assert b"".join(contents) == b"short\n" + b"y" * 3000 + b"\nend\n"
    assert contents[0] == b"short\n"  # cut at the newline, not at 1024
    assert [len(c) for c in contents[1:-1]] == [1024, 1024]  # the long line, split
    assert contents[-1].endswith(b"\nend\n")


def test_rotation_with_no_backups_and_disabled_rotation(superd: Superd) -> None:
    superd.start({"a": worker(["seq", "1", "2000"], stdout={"maxbytes": "1KB", "backups": 0}),
                  "b": worker(["seq", "1", "2000"], stdout={"maxbytes": 0})})
    superd.wait_state("a", "EXITED")
    superd.wait_state("b", "EXITED")
    full = "".join(f"{i}\n" for i in range(1, 2001)).encode()
    a_out = superd.log_file("a")
    assert rotated_files(a_out) == [a_out]
    kept = a_out.read_bytes()
    assert 0 < len(kept) <= 1024 and full.endswith(kept)
    assert full[-len(kept) - 1:-len(kept)] == b"\n"
    assert superd.log_file("b").read_bytes() == full
    assert rotated_files(superd.log_file("b")) == [superd.log_file("b")]


def follow_events(client: Client, until: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Log events until their complete lines include line number `until`."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    text = ""
    while until not in line_numbers(text[:text.rfind("\n") + 1]):
        assert time.monotonic() < deadline, f"followed only this far: {text[-100:]!r}"
        message = client.receive()
        assert message is not None, "daemon closed the follow connection"
        kind, event = message
        assert kind == Kind.EVENT and event["event"] == "log", event
        events.append(event)
        text += event["data"]
    return events


def test_follow_sees_new_lines_across_rotation(superd: Superd) -> None:
    superd.start({"a": ticker(0.005, stdout={"maxbytes": "1KB", "backups": 2})})
    wait_for(lambda: superd.log_file("a").stat().st_size > 0, what="first output")
    followers = [superd.client(), superd.client()]
    try:
        replies = [f.call("logs", {"name": "a", "lines": 1, "follow": True}) for f in followers]
        for follower, reply in zip(followers, replies, strict=True):
            first = line_numbers(reply["result"]["data"])
            assert len(first) == 1
            # 1 KB holds ~100 lines: following to +400 crosses several rotations.
            events = follow_events(follower, first[0] + 400)
            text = "".join(e["data"] for e in events)
            numbers = line_numbers(text[:text.rfind("\n") + 1])
            assert numbers == list(range(first[0] + 1, numbers[-1] + 1))
        assert Path(str(superd.log_file("a")) + ".2").exists()
        # Followers do not disturb anyone else.
        assert superd.status("a")["state"] == "RUNNING"
    finally:
        for follower in followers:
            follower.close()
    # Disconnected followers are forgotten; the worker keeps running and logging.
    size = superd.log_file("a").stat().st_size
    wait_for(lambda: superd.log_file("a").stat().st_size != size, what="more output")


def test_slow_follower_is_cut_off_with_a_message(superd: Superd) -> None:
    superd.start({"a": worker(["yes", "flood"], stdout={"maxbytes": "1MB", "backups": 1})})
    client = superd.client()
    client.sock.setsockopt(__import__("socket").SOL_SOCKET,
                           __import__("socket").SO_RCVBUF, 4096)
    try:
        client.call("logs", {"name": "a", "lines": 0, "follow": True})
        # Not reading: the daemon must give up on us instead of buffering forever.
        start = time.monotonic()
        wait_for(lambda: time.monotonic() - start > 0.5 and superd.call("ping"),
                 what="time to fall behind")
        last = None
        while (message := client.receive()) is not None:
            last = message
        assert last is not None and last[1]["event"] == "log_cut", last
    finally:
        client.close()
    assert superd.status("a")["state"] == "RUNNING"


@contextlib.contextmanager
def following(superd: Superd, name: str) -> Iterator[subprocess.Popen[str]]:
    """`superctl logs NAME -f -n 1` running for the block; ended if still alive."""
    ctl = subprocess.Popen([PY, "-m", "superd.cli", "-s", superd.socket, "logs", name,
                            "-f", "-n", "1"], env=superd.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        yield ctl
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()


def test_superctl_logs_follow_exits_0_on_sigint(superd: Superd) -> None:
    superd.start({"a": ticker(0.02)})
    with following(superd, "a") as ctl:
        assert ctl.stdout is not None
        lines = [ctl.stdout.readline() for _ in range(3)]
        numbers = line_numbers("".join(lines))
        assert numbers == list(range(numbers[0], numbers[0] + 3))
        ctl.send_signal(signal.SIGINT)
        assert ctl.wait(timeout=20) == 0
        assert ctl.stderr is not None and "Traceback" not in ctl.stderr.read()


def test_superctl_logs_follow_exits_0_when_superd_goes_away(superd: Superd) -> None:
    superd.start({"a": ticker(0.02)})
    with following(superd, "a") as ctl:
        assert ctl.stdout is not None and ctl.stdout.readline()
        assert superd.ctl("shutdown").returncode == 0
        assert ctl.wait(timeout=20) == 0
        assert ctl.stderr is not None
        stderr = ctl.stderr.read()
        assert "superd went away" in stderr and "Traceback" not in stderr


def test_status_answers_quickly_while_a_worker_floods(superd: Superd) -> None:
    superd.start({"a": worker(["yes"], stdout={"maxbytes": "4MB", "backups": 1}),
                  "b": worker(["yes"], stderr={"merge": True},
                              stdout={"maxbytes": "4MB", "backups": 1})})
    wait_for(lambda: Path(str(superd.log_file("a")) + ".1").exists(), what="a rotation")
    slowest = 0.0
    for _ in range(20):
        start = time.monotonic()
        rows = superd.status()
        slowest = max(slowest, time.monotonic() - start)
        assert [r["state"] for r in rows] == ["RUNNING", "RUNNING"]
    assert slowest < 1.0, slowest
    assert os.path.getsize(superd.log_file("a")) <= 4 << 20


def test_reopen_by_command_and_sigusr1(superd: Superd) -> None:
    superd.start({"a": ticker(0.01)})
    out = superd.log_file("a")
    daemon_log = superd.folder / "log" / "superd.log"
    wait_for(lambda: out.stat().st_size > 0, what="first output")
    for how in ("command", "signal"):
        out.rename(out.with_suffix(".old"))
        daemon_log.rename(daemon_log.with_suffix(".old"))
        if how == "command":
            result = superd.ctl("reopen")
            assert result.returncode == 0, result.stderr
        else:
            os.kill(superd.pid or 0, signal.SIGUSR1)
        wait_for(lambda: out.exists() and out.stat().st_size > 0, what=f"reopen by {how}")
        wait_for(lambda: "log files reopened" in daemon_log.read_text(),
                 what="daemon log reopened")
        old = line_numbers(out.with_suffix(".old").read_text())
        new = line_numbers(out.read_text())
        # Nothing lost or repeated across the switch.
        assert new[0] == old[-1] + 1


def test_unwritable_log_drops_counts_and_resumes(superd: Superd) -> None:
    superd.start({"a": ticker(0.005)})
    pid = superd.wait_state("a", "RUNNING")["pid"]
    out = superd.log_file("a")
    wait_for(lambda: out.stat().st_size > 0, what="first output")
    daemon = superd.pid or 0
    events = superd.client()
    assert events.result("subscribe") == {}
    limits = resource.prlimit(daemon, resource.RLIMIT_FSIZE)
    # A 1-byte file size limit on the daemon: every write to the log fails (EFBIG).
    resource.prlimit(daemon, resource.RLIMIT_FSIZE, (1, limits[1]))
    try:
        wait_for(lambda: superd.status("a")["log_dropped_bytes"] > 100, what="dropped bytes")
        row = superd.status("a")
        assert row["pid"] == pid and row["state"] == "RUNNING"
    finally:
        resource.prlimit(daemon, resource.RLIMIT_FSIZE, limits)
    error = events.next_event("log_error")
    assert error["name"] == "a" and error["path"] == str(out)
    assert "too large" in error["message"] and isinstance(error["time"], float)
    events.close()
    stuck = out.stat().st_size
    wait_for(lambda: out.stat().st_size > stuck + 100, what="writing to resume")
    daemon_log = superd.folder / "log" / "superd.log"
    wait_for(lambda: "bytes dropped so far" in daemon_log.read_text(), what="recovery logged")
    assert superd.status("a")["pid"] == pid
    result = superd.ctl("--json", "status", "a")
    assert '"log_dropped_bytes"' in result.stdout


def test_deleted_log_folder_is_created_again(superd: Superd) -> None:
    superd.start({"a": ticker(0.005)})
    out = superd.log_file("a")
    wait_for(lambda: out.exists() and out.stat().st_size > 0, what="first output")
    shutil.rmtree(out.parent)
    wait_for(lambda: out.exists() and out.stat().st_size > 0, what="log file to come back")
    assert superd.status("a")["state"] == "RUNNING"


def test_full_filesystem_drops_counts_and_resumes(superd: Superd, tmp_path: Path) -> None:
    with small_disk(tmp_path / "small") as small:
        out = small / "a.out.log"
        superd.start({"a": worker(["yes", "full"], stdout={"file": str(out), "maxbytes": 0})})
        pid = superd.wait_state("a", "RUNNING")["pid"]
        wait_for(lambda: superd.status("a")["log_dropped_bytes"] > 0, what="the disk to fill")
        assert superd.call("ping")
        out.unlink()  # room again
        wait_for(lambda: out.exists() and out.stat().st_size > 0, what="writing to resume")
        assert superd.status("a")["pid"] == pid
        superd.stop()



def test_read_write_fallback_rotates_without_loss(superd: Superd) -> None:
    # The path taken when splice(2) is refused (and while someone follows).
    superd.env["SUPERD_NO_SPLICE"] = "1"
    superd.start({"a": worker(["seq", "1", "3000"], stdout={"maxbytes": "2KB", "backups": 20})})
    superd.wait_state("a", "EXITED")
    files = rotated_files(superd.log_file("a"))
    assert len(files) == 7
    assert all(2048 - 5 <= f.stat().st_size <= 2048 for f in files[:-1])  # whole lines
    assert all(f.read_bytes().endswith(b"\n") for f in files)
    kept = b"".join(f.read_bytes() for f in files)
    assert kept == "".join(f"{i}\n" for i in range(1, 3001)).encode()


def test_a_fifo_as_log_file_is_written_not_rotated(superd: Superd) -> None:
    fifo = superd.folder / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        superd.start({"a": worker(["seq", "1", "500"],
                                  stdout={"file": str(fifo), "maxbytes": "1KB"})})
        superd.wait_state("a", "EXITED")
        chunks: list[bytes] = []

        def everything() -> bool:
            with contextlib.suppress(BlockingIOError):
                chunks.append(os.read(reader, 1 << 16))
            return b"".join(chunks).endswith(b"500\n")

        wait_for(everything, what="the fifo to carry everything")
        assert b"".join(chunks) == "".join(f"{i}\n" for i in range(1, 501)).encode()
        assert not list(superd.folder.glob("fifo.*"))
        assert fifo.exists() and superd.call("ping")
    finally:
        os.close(reader)


def test_instances_sharing_a_file_do_not_overwrite_each_other(superd: Superd) -> None:
    shared = superd.folder / "shared.log"
    script = ("import os\n"
              "tag = os.environ['SUPERD_INSTANCE']\n"
              "for i in range(2000):\n"
              "    os.write(1, f'{tag} {i}\\n'.encode())\n")
    superd.start({"w": worker([PY, "-c", script], numprocs=2,
                              stdout={"file": str(shared), "maxbytes": 0})})
    superd.wait_state("w:0", "EXITED")
    superd.wait_state("w:1", "EXITED")
    lines = shared.read_text().splitlines()
    for tag in "01":
        assert [line for line in lines if line.startswith(tag)] == \
            [f"{tag} {i}" for i in range(2000)]
    assert len(lines) == 4000


def test_logs_of_several_instances_are_merged_in_time_order(superd: Superd) -> None:
    # Three instances take turns through a shared counter file, so the order
    # in which their lines were written is known.
    turn = superd.folder / "turn"
    turn.write_text("0")
    script = ("import os, sys, time\n"
              "me, path = int(os.environ['SUPERD_INSTANCE']), sys.argv[1]\n"
              "n = me\n"
              "while n < 30:\n"
              "    if int(open(path).read() or 0) == n:\n"
              "        os.write(1, b'line %d\\n' % n)\n"
              "        time.sleep(0.03)\n"
              "        open(path, 'w').write(str(n + 1))\n"
              "        n += 3\n"
              "    time.sleep(0.005)\n"
              "time.sleep(600)\n")
    superd.start({"w": worker([PY, "-c", script, str(turn)], numprocs=3),
                  "quiet": worker(["sleep", "600"])})
    wait_for(lambda: turn.read_text() == "30", what="30 lines written in turn")
    merged = superd.ctl("logs", "w", "-n", "12")
    assert merged.returncode == 0, merged.stderr
    expected = [f"w:{n % 3} | line {n}" for n in range(18, 30)]
    assert merged.stdout.splitlines() == expected
    # Several names, and the wire form: [name, text] pairs.
    result = superd.call("logs", {"names": ["w:2", "w:0"], "lines": 3})
    assert result["names"] == ["w:2", "w:0"]
    assert result["lines"] == [["w:2", "line 26\n"], ["w:0", "line 27\n"],
                               ["w:2", "line 29\n"]]
    # No name at all is every instance; one instance has no prefix.
    assert superd.ctl("logs", "-n", "1").stdout == "w:2   | line 29\n"
    assert superd.ctl("logs", "w:1", "-n", "1").stdout == "line 28\n"


def test_logs_f_follows_several_instances_across_restarts(superd: Superd) -> None:
    script = ("import os, sys, time\n"
              "os.write(1, b'start ' + os.environ['SUPERD_NAME'].encode() + b'\\n')\n"
              "os.write(1, b'part of a ')\n"
              "time.sleep(0.2)\n"
              "os.write(1, b'line\\n')\n"
              "time.sleep(600)\n")
    superd.start({"w": worker([PY, "-c", script], numprocs=2)})
    wait_for(lambda: all(superd.log_file(f"w:{i}").read_bytes().count(b"\n") == 2
                         for i in range(2)))
    output = superd.folder / "followed"
    with output.open("w") as sink:
        follower = subprocess.Popen([PY, "-m", "superd.cli", "-s", superd.socket, "logs",
                                     "-f", "-n", "1", "w"], env=superd.env, stdout=sink,
                                    stderr=subprocess.DEVNULL)
    try:
        # The tail's one line comes first: from then on it follows.
        wait_for(lambda: output.read_text().endswith("part of a line\n"), what="the tail")
        assert superd.ctl("restart", "w").returncode == 0
        wait_for(lambda: output.read_text().count("part of a line") == 3
                 and output.read_text().count("start") == 2, what="both restarts followed")
    finally:
        follower.terminate()
        follower.wait(DEADLINE)
    lines = output.read_text().splitlines()[1:]
    assert sorted(lines) == ["w:0 | part of a line", "w:0 | start w:0",
                             "w:1 | part of a line", "w:1 | start w:1"]
