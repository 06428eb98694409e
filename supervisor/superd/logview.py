"""How `superctl logs` prints: one instance's output as it is; several
instances' lines each after an `INSTANCE | ` prefix, the names padded to one
width and coloured on a terminal; while following, each instance's part
line is held until its newline comes, so lines never mix."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

# Cyan, green, yellow, magenta, blue, red: a name keeps its colour by its rank.
PREFIX_COLOURS = ("36", "32", "33", "35", "34", "31")


class LogView:
    def __init__(self, names: list[str], colour: bool) -> None:
        self.prefixed = len(names) > 1
        width = max(map(len, names), default=0)
        self.prefixes = {name: self._prefix(name, width, rank, colour)
                         for rank, name in enumerate(names)}
        self.held: dict[str, str] = {}

    @staticmethod
    def _prefix(name: str, width: int, rank: int, colour: bool) -> str:
        padded = name.ljust(width)
        if colour:
            padded = f"\x1b[{PREFIX_COLOURS[rank % len(PREFIX_COLOURS)]}m{padded}\x1b[0m"
        return f"{padded} | "

    def show_lines(self, lines: list[list[Any]]) -> None:
        """The merged tail: [name, text] pairs, each text one line."""
        out = [self._line(str(name), str(text)) for name, text in lines]
        sys.stdout.write("".join(out))
        sys.stdout.flush()

    def show_chunk(self, name: str, data: str) -> None:
        """Followed output: a chunk of one instance's stream."""
        if not self.prefixed:
            sys.stdout.write(data)
            sys.stdout.flush()
            return
        text = self.held.pop(name, "") + data
        whole, _, part = text.rpartition("\n")
        if part:
            self.held[name] = part
        if whole or text.endswith("\n"):
            self.show_lines([[name, line + "\n"] for line in whole.split("\n")])

    def finish(self) -> None:
        """Print the part lines still held (following ended)."""
        held, self.held = self.held, {}
        self.show_lines([[name, part + "\n"] for name, part in held.items()])

    def _line(self, name: str, text: str) -> str:
        if not self.prefixed:
            return text
        prefix = self.prefixes.get(name) or f"{name} | "
        return prefix + (text if text.endswith("\n") else text + "\n")
