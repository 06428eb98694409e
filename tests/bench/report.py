"""The figures compare.py collects, and the one table and JSON it makes of them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes import median, p95

CONTENDERS = ("superd", "supervisord", "floor")
SUMMARIES: dict[str, Callable[[list[float]], float]] = {"median": median, "p95": p95,
                                                       "max": max}


@dataclass
class Figure:
    """One measured quantity: its samples per contender, or why there are none."""

    key: str
    label: str
    unit: str
    summaries: tuple[str, ...] = ("median", "p95")
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # contender -> timeout, skipped

    def add(self, contender: str, *values: float) -> None:
        self.samples.setdefault(contender, []).extend(values)

    def summary(self, contender: str, name: str) -> float | str | None:
        if contender in self.notes:
            return self.notes[contender]
        values = self.samples.get(contender)
        return SUMMARIES[name](values) if values else None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"label": self.label, "unit": self.unit}
        for contender in CONTENDERS:
            if contender in self.notes or contender in self.samples:
                samples = [round(value, 4) for value in self.samples.get(contender, [])]
                entry[contender] = {"samples": samples,
                                    **{name: self.summary(contender, name)
                                       for name in self.summaries}}
        return entry


class Results:
    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}

    def define(self, key: str, label: str, unit: str,
               summaries: tuple[str, ...] = ("median", "p95")) -> Figure:
        self.figures[key] = Figure(key, label, unit, summaries)
        return self.figures[key]

    def __getitem__(self, key: str) -> Figure:
        return self.figures[key]

    def note(self, keys: list[str], contender: str, note: str) -> None:
        """Mark figures that have no value for a contender (timeout, skipped)."""
        for key in keys:
            self.figures[key].notes.setdefault(contender, note)


def number(value: float | str | None, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if unit == "count":
        return f"{value:.0f}"
    size = abs(value)
    decimals = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 1 else 3
    return f"{value:.{decimals}f}"


def ratio(top: float | str | None, bottom: float | str | None) -> str:
    if not isinstance(top, float | int) or not isinstance(bottom, float | int) or bottom <= 0:
        return ""
    return f"{top / bottom:.2f}x"


def rows(results: Results) -> Iterator[list[str]]:
    for figure in results.figures.values():
        for name in figure.summaries:
            values = {contender: figure.summary(contender, name) for contender in CONTENDERS}
            yield [f"{figure.label}, {name} ({figure.unit})",
                   *(number(values[contender], figure.unit) for contender in CONTENDERS),
                   ratio(values["superd"], values["supervisord"]),
                   ratio(values["superd"], values["floor"])]


def table(results: Results) -> str:
    header = ["figure", *CONTENDERS, "superd/supervisord", "superd/floor"]
    body = list(rows(results))
    widths = [max(len(row[column]) for row in [header, *body]) for column in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return " | ".join(cells)

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def write_json(path: Path, results: Results, meta: dict[str, Any],
               cleanup: dict[str, Any]) -> None:
    document = {"meta": meta, "cleanup": cleanup,
                "figures": {key: figure.as_json() for key, figure in results.figures.items()}}
    path.write_text(json.dumps(document, indent=2) + "\n")
