"""The state one image of superd hands to the next when it re-execs itself.

The state is one JSON object in a memfd, whose number the new image gets on
its command line (`--resume FD`).  FORMAT names the object's layout: an image
reads the formats in READABLE, and the old image asks the new one which it
reads (`--can-resume FORMAT`) before it execs, so a new image never gets a
state it cannot take over.  The state names every descriptor that must
survive the exec; every other one is close-on-exec and goes.
"""

from __future__ import annotations

import os
import sys

from . import jsoncodec

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    State: TypeAlias = dict[str, Any]

FORMAT = 1
READABLE = frozenset({1})
MAX_STATE = 64 << 20  # a bound on what a new image reads (10,000 instances take ~5 MiB)


class HandoverError(Exception):
    """The state cannot be read or is not one this image takes over."""


def refusal(fmt: int) -> str | None:
    """Why this image cannot take a state of format `fmt` over (None: it can)."""
    if fmt in READABLE:
        return None
    readable = ", ".join(str(f) for f in sorted(READABLE))
    return f"this superd reads state format {readable}, not {fmt}"


def write_state(state: State) -> int:
    """The state in a fresh memfd, rewound, inheritable; its fd."""
    fd = bytes_in_memfd(jsoncodec.dumps({"format": FORMAT, **state}).encode(), "superd-state")
    os.set_inheritable(fd, True)  # for the next image
    return fd


def read_state(fd: int) -> State:
    """Read and close the state handed over on fd."""
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > MAX_STATE:
                raise HandoverError(f"state larger than {MAX_STATE} bytes")
            chunks.append(chunk)
        state = jsoncodec.loads(b"".join(chunks).decode())
    except (OSError, ValueError) as exc:
        raise HandoverError(f"cannot read the state on fd {fd}: {exc}") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    if not isinstance(state, dict) or not isinstance(state.get("format"), int):
        raise HandoverError(f"fd {fd} does not hold a superd state")
    reason = refusal(state["format"])
    if reason is not None:
        raise HandoverError(reason)
    return state


def kept_fds(state: State) -> list[int]:
    """Every descriptor the state names: those that must survive the exec."""
    workers = state["workers"]
    kept = [state["pidfile"], state["control"], *workers["sockets"].values()]
    if workers["notify"] is not None:
        kept.append(workers["notify"])
    metrics = state.get("metrics")  # absent in a state from before metrics
    if metrics is not None:
        kept.append(metrics["fd"])
    kept.extend(pipe[0] for pipes in workers["logs"].values() for pipe in pipes)
    return kept


def resume_argv(fd: int) -> list[str]:
    """The command line of the new image: the installed superd of this Python."""
    return [sys.executable, "-m", "superd", "--resume", str(fd)]


def check_argv(config_path: str) -> list[str]:
    """The command that asks the installed superd whether it takes this FORMAT
    and the running config over (its bytes come on stdin)."""
    return [sys.executable, "-m", "superd", "--can-resume", str(FORMAT), config_path]


def bytes_in_memfd(data: bytes, name: str) -> int:
    """data in a fresh memfd (close-on-exec), rewound: a file to read it from
    that never blocks whoever writes it."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def encode_bytes(data: bytes) -> str:
    """Bytes as a JSON string, byte for byte (latin-1 maps each byte to one character)."""
    return data.decode("latin-1")


def decode_bytes(text: str) -> bytes:
    return text.encode("latin-1")
