"""`superctl top`: a live, full-screen table of every instance, with curses.

The screen is a pure function of what superd last answered and the size of
the terminal (screen_lines); a painter puts it on the terminal, and the
loop's one wait is getch with the time left to the next refresh, so top
wakes only for a refresh or a key. superd's answers come over one
connection, opened again whenever it is lost: a re-exec closes every
connection, and a daemon that went away is shown as unreachable and asked
again at each refresh.

cli.py imports this module (and with it curses) only to run `top`.
"""

from __future__ import annotations

import contextlib
import curses
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from superd.client import Client, CommandFailed, DaemonUnreachable
from superd.display import (
    STATE_COLOURS,
    colour_allowed,
    format_bytes,
    format_cpu,
    format_duration,
)

Row: TypeAlias = dict[str, Any]
# A screen line: its parts, each with its style ("" plain, a state name for
# a STATE cell, or one of the keys of Painter's STYLES).
Line: TypeAlias = list[tuple[str, str]]

# Rows sort by group (stable, so in config order within one): the states
# that need attention, then RUNNING, then STOPPED. A state this superctl
# does not know needs attention.
GROUPS = {"FATAL": 0, "BACKOFF": 0, "EXITED": 0, "STARTING": 0, "STOPPING": 0,
          "RUNNING": 1, "STOPPED": 2}
HEALTH_VALUES = ("starting", "healthy", "unhealthy")
GAP = "  "  # between two columns
NAME_LEAST = 10  # names are cut down to this before columns are dropped
QUIT_KEYS = (ord("q"), ord("Q"))
LONGEST_WAIT_MS = 86_400_000  # getch's timeout is a C int: wake at least daily


class NoTerminal(Exception):
    """top cannot draw here: no terminal, or one curses cannot drive."""


class Column(NamedTuple):
    title: str
    least: int  # so that a column does not jump as its figures change
    right: bool  # numbers are right-aligned
    cell: Callable[[Row], str]


def pid_cell(row: Row) -> str:
    return "-" if row.get("pid") is None else str(row["pid"])


COLUMNS = (
    Column("NAME", 0, False, lambda row: str(row.get("name", "?"))),
    Column("STATE", max(map(len, GROUPS)), False, lambda row: str(row.get("state", "?"))),
    Column("PID", 7, True, pid_cell),
    Column("UPTIME", 6, True, lambda row: format_duration(row.get("uptime"))),
    Column("RESTARTS", 0, True, lambda row: str(row.get("restarts", 0))),
    Column("CPU%", 6, True, lambda row: format_cpu(row.get("cpu_percent"))),
    Column("RSS", 7, True, lambda row: format_bytes(row.get("rss_bytes"))),
)
HEALTH = Column("HEALTH", max(map(len, HEALTH_VALUES)), False,
                lambda row: str(row.get("health") or "-"))


@dataclass(frozen=True)
class Snapshot:
    """What superd answered at one refresh, or why it did not."""

    ping: Row = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    error: str = ""


# --- the screen, as text ----------------------------------------------------


def sorted_rows(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: GROUPS.get(str(row.get("state")), 0))


def state_counts(rows: Sequence[Row]) -> str:
    """'5 running, 1 backoff': most first, as superd's STATUS= line for systemd."""
    counts: dict[str, int] = {}
    for row in rows:
        state = str(row.get("state")).lower()
        counts[state] = counts.get(state, 0) + 1
    if not counts:
        return "no instances"
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {state}" for state, count in ordered)


def daemon_line(snapshot: Snapshot) -> str:
    if snapshot.error:
        return snapshot.error
    ping = snapshot.ping
    line = f"superd {ping.get('version')} pid {ping.get('pid')} " \
        f"up {format_duration(ping.get('uptime'))}"
    if ping.get("reexecs"):
        line += f" re-execs {ping['reexecs']}"
    return f"{line} | {state_counts(snapshot.rows)}"


def layout(columns: Sequence[Column], cells: Sequence[Sequence[str]],
           width: int) -> list[int]:
    """The width of each column that fits in width, fewer columns when not all
    do: names are cut down to NAME_LEAST first, then columns are dropped from
    the right (NAME and STATE stay; a line still too long is cut at width)."""
    widths = [max(column.least, len(column.title), *(len(row[i]) for row in cells))
              for i, column in enumerate(columns)]
    name_least = min(widths[0], NAME_LEAST)
    kept = len(widths)
    while kept > 2 and name_least + rest_width(widths[1:kept]) > width:
        kept -= 1
    widths = widths[:kept]
    widths[0] = max(name_least, min(widths[0], width - rest_width(widths[1:])))
    return widths


def rest_width(widths: Sequence[int]) -> int:
    """The width of these columns, each with the gap before it."""
    return sum(widths) + len(GAP) * len(widths)


def shorten(text: str, width: int, ellipsis: str) -> str:
    """text cut to width in the middle, so that `web:12` keeps its index."""
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return text[:max(width, 0)]
    tail = (width - len(ellipsis)) // 2
    head = width - len(ellipsis) - tail
    return text[:head] + ellipsis + (text[len(text) - tail:] if tail else "")


def aligned(column: Column, text: str, width: int) -> str:
    return text.rjust(width) if column.right else text.ljust(width)


def table_lines(rows: Sequence[Row], shown: int, width: int, ellipsis: str) -> list[Line]:
    """The header, then a line for each of the first `shown` rows. The widths
    come from every row, so that columns stay put as rows scroll in and out."""
    columns = [*COLUMNS, HEALTH] if any(row.get("health") is not None for row in rows) \
        else list(COLUMNS)
    cells = [[column.cell(row) for column in columns] for row in rows]
    widths = layout(columns, cells, width)
    header = GAP.join(aligned(column, column.title, size)
                      for column, size in zip(columns, widths, strict=False))
    lines: list[Line] = [[(header.ljust(width), "header")]]
    for row_cells in cells[:shown]:
        name = aligned(columns[0], shorten(row_cells[0], widths[0], ellipsis), widths[0])
        state = row_cells[1]
        rest = "".join(GAP + aligned(column, text, size) for column, text, size
                       in zip(columns[2:], row_cells[2:], widths[2:], strict=False))
        lines.append([(name + GAP, ""), (state, state),
                      (" " * (widths[1] - len(state)) + rest, "")])
    return lines


def screen_lines(snapshot: Snapshot, width: int, height: int,
                 ellipsis: str = "…") -> list[Line]:
    """The whole screen: superd's line, the header, as many rows as fit and
    `… N more` for the rest; no line longer than width, none below height."""
    if width <= 0 or height <= 0:
        return []
    lines: list[Line] = [[(daemon_line(snapshot), "alert" if snapshot.error else "title")]]
    if not snapshot.error:
        rows = sorted_rows(snapshot.rows)
        room = height - 2
        shown = rows if len(rows) <= room else rows[:max(room - 1, 0)]
        lines += table_lines(rows, len(shown), width, ellipsis)
        if len(shown) < len(rows):
            lines.append([(f"{ellipsis} {len(rows) - len(shown)} more", "")])
    return [clip(line, width) for line in lines[:height]]


def clip(line: Line, width: int) -> Line:
    clipped: Line = []
    room = width
    for text, style in line:
        if room <= 0:
            break
        clipped.append((text[:room], style))
        room -= len(text)
    return clipped


def plain(lines: Sequence[Line]) -> list[str]:
    """The screen's text, as a terminal shows it (for tests and debugging)."""
    return ["".join(text for text, _ in line).rstrip() for line in lines]


# --- asking superd ----------------------------------------------------------


class Source:
    """superd's answers over one connection, reconnecting when it is lost."""

    def __init__(self, client: Client) -> None:
        self.path = client.path
        self.client: Client | None = client

    def fetch(self) -> Snapshot:
        if self.client is not None:
            try:
                return self.ask(self.client)
            except DaemonUnreachable:
                self.close()  # a re-exec closes every connection: a new one at once
        try:
            self.client = Client(self.path)
            return self.ask(self.client)
        except DaemonUnreachable as exc:
            self.close()
            return Snapshot(error=f"superd unreachable: {exc}")

    def ask(self, client: Client) -> Snapshot:
        """ping and status, pipelined: one round trip."""
        ping_id = client.send("ping", {})
        status_id = client.send("status", {"names": []})
        try:
            ping = client.wait(ping_id)
            try:
                rows = client.wait(status_id)
            except CommandFailed as exc:
                if exc.code != "no_such_worker":  # what a config without workers answers
                    raise
                rows = []
        except CommandFailed as exc:
            self.close()  # a reply may still be on its way: start afresh next time
            return Snapshot(error=f"superd: {exc.message}")
        if not isinstance(ping, dict) or not isinstance(rows, list) \
                or not all(isinstance(row, dict) for row in rows):
            self.close()
            return Snapshot(error="unexpected reply from superd")
        return Snapshot(ping, rows)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# --- the terminal -----------------------------------------------------------


class Painter:
    """Puts screen_lines on a curses window, in colour where allowed."""

    STYLES = {"title": curses.A_BOLD, "header": curses.A_REVERSE, "alert": curses.A_BOLD}

    def __init__(self, screen: curses.window, colour: bool) -> None:
        self.screen = screen
        self.attrs = dict(self.STYLES)
        if colour:
            self.attrs.update(colour_attrs())
        self.ellipsis = "…" if encodable("…", screen.encoding) else "..."

    def paint(self, snapshot: Snapshot) -> None:
        height, width = self.screen.getmaxyx()
        self.screen.erase()
        for y, line in enumerate(screen_lines(snapshot, width, height, self.ellipsis)):
            x = 0
            for text, style in line:
                self.put(y, x, text, self.attrs.get(style, curses.A_NORMAL))
                x += len(text)
        self.screen.refresh()

    def put(self, y: int, x: int, text: str, attr: int) -> None:
        try:
            self.screen.addstr(y, x, text, attr)
        except curses.error:
            pass  # the bottom-right cell: written, but the cursor cannot move past it


def colour_attrs() -> dict[str, int]:
    """A colour pair per colour of STATE_COLOURS (SGR 3N is curses colour N);
    none if the terminal cannot have them."""
    try:
        curses.start_color()
        try:
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        pairs: dict[str, int] = {}
        for number, code in enumerate(sorted(set(STATE_COLOURS.values())), start=1):
            curses.init_pair(number, int(code) - 30, background)
            pairs[code] = curses.color_pair(number)
    except curses.error:
        return {}
    attrs = {state: pairs[code] for state, code in STATE_COLOURS.items()}
    attrs["alert"] = pairs[STATE_COLOURS["FATAL"]] | curses.A_BOLD
    return attrs


def encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def wait_key(screen: curses.window, due: float) -> int:
    """The key pressed before due (a monotonic time), or -1 at due."""
    left = math.ceil((due - time.monotonic()) * 1000)
    screen.timeout(min(max(left, 0), LONGEST_WAIT_MS))
    return screen.getch()


def show(screen: curses.window, source: Source, delay: float) -> None:
    """Refresh every delay seconds and at each key (KEY_RESIZE too) until q."""
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal that cannot hide its cursor
    painter = Painter(screen, colour_allowed() and curses.has_colors())
    snapshot = source.fetch()
    due = time.monotonic() + delay
    while True:
        painter.paint(snapshot)
        if wait_key(screen, due) in QUIT_KEYS:
            return
        if time.monotonic() >= due:
            snapshot = source.fetch()
            due = time.monotonic() + delay


def run(client: Client, delay: float) -> None:
    """Show top on this terminal until q; Ctrl-C raises KeyboardInterrupt
    once the terminal is restored."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise NoTerminal("top needs a terminal")
    source = Source(client)
    try:
        with terminal() as screen:
            show(screen, source, delay)
    except curses.error as exc:
        raise NoTerminal(f"cannot draw on this terminal: {exc}") from None
    finally:
        source.close()


@contextlib.contextmanager
def terminal() -> Iterator[curses.window]:
    """curses.wrapper's set-up and restore, without its start_color(): that
    makes ncurses paint every cell white on black, colour that NO_COLOR
    forbids (Painter starts colour only where it is allowed)."""
    screen = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        yield screen
    finally:
        screen.keypad(False)
        curses.echo()
        curses.nocbreak()
        curses.endwin()
