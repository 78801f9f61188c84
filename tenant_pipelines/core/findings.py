"""What an audit found: the object, what is wrong with it, and the fix, as one line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    obj: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.problem}; fix: {self.fix}"
