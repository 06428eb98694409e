"""How superctl shows values to people: durations, sizes, CPU, state colours.

Shared by `superctl status` (cli.py) and `superctl top` (top.py), so that
neither imports the other. Every run of superctl imports this module: it
imports nothing that cli.py does not already import.
"""

from __future__ import annotations

import os
import sys

# The SGR colour of each state that has one (30 + a curses colour number).
STATE_COLOURS = {
    "RUNNING": "32",
    "STARTING": "33",
    "BACKOFF": "33",
    "STOPPING": "33",
    "FATAL": "31",
    "EXITED": "31",
}


def format_duration(seconds: float | None) -> str:
    """Two most significant units: 5s, 3m12s, 2h05m, 3d04h; '-' for none."""
    if seconds is None:
        return "-"
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(size: int | None) -> str:
    """Powers of 1024 with one decimal: 512B, 12.3M; '-' for none."""
    if size is None:
        return "-"
    value = float(size)
    unit = "B"
    for larger in "KMGTP":
        if value < 1024:
            break
        value /= 1024
        unit = larger
    return f"{size}B" if unit == "B" else f"{value:.1f}{unit}"


def format_cpu(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.1f}"


def paint_state(state: str, colour: bool) -> str:
    code = STATE_COLOURS.get(state)
    if not colour or code is None:
        return state
    return f"\x1b[{code}m{state}\x1b[0m"


def colour_allowed() -> bool:
    """NO_COLOR set (to any value) means no colour, whatever the terminal."""
    return "NO_COLOR" not in os.environ


def wants_colour() -> bool:
    return sys.stdout.isatty() and colour_allowed()
