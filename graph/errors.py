"""The project's error types: one base class, and a problem record that says where and what."""
from __future__ import annotations

from dataclasses import dataclass


class GraftError(ValueError):
    """Base class for every error graft raises on purpose (bad input, bad state, bad config)."""


class StoreBusy(GraftError):
    """Another process held the store's file lock for longer than graft waits."""


@dataclass(frozen=True)
class Problem:
    """One bad value in one input file.

    Args:
        file: the path as the user gave it.
        line: 1-based line (JSONL, CSV), row (Parquet) or record (.graph) number; 0 for the
            file as a whole (empty, unreadable header).
        field: the field (column) name, or "" when the whole row is at fault.
        value: the value seen, shortened for display.
        expected: what would have been accepted.
    """

    file: str
    line: int
    field: str
    value: str
    expected: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" field '{self.field}'" if self.field else ""
        return f"{where}:{field} got {self.value}; expected {self.expected}"


def shorten(value: object, limit: int = 60) -> str:
    """repr() of a value cut to `limit` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class IngestError(GraftError):
    """An input was rejected whole; `problems` lists every bad value found (up to a cap)."""

    def __init__(self, problems: list[Problem], total: int | None = None, cap: int = 50):
        self.problems = problems
        self.total = len(problems) if total is None else total
        shown = problems[:cap]
        lines = [str(p) for p in shown]
        rest = self.total - len(shown)
        if rest > 0:
            lines.append(f"... and {rest} more problem(s)")
        head = f"rejected: {self.total} problem(s); nothing was written"
        super().__init__(head + "\n" + "\n".join(lines))
