"""A stage of a run: what its result depends on (`identity`), whether that result is there and
current (`status`), what running it costs (`plan`), and running it (`run`).

The runner, the dry-run, `kd study` and each command ask the stage; nothing else decides whether
work is done. An identity is a JSON-able dict of everything the result depends on, by content: a
change to any of it makes the stage, and the stages after it that include its identity in theirs,
run again; a change to anything else (a batch size, the number of DataLoader workers) does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

State = Literal["done", "todo", "resume", "stale"]


@dataclass(frozen=True)
class Status:
    state: State
    detail: str = ""  # what is there, or why it is stale

    @property
    def done(self) -> bool:
        return self.state == "done"

    def __str__(self) -> str:
        words = {"done": "complete", "todo": "to run", "resume": "to resume", "stale": "stale"}[self.state]
        return f"{words}: {self.detail}" if self.detail else words


@dataclass(frozen=True)
class PlanRow:
    """One stage in `kd run --dry-run`'s table: figures come from the objects the stage runs with."""

    stage: str
    what: str
    teacher_forwards: str = ""
    tokens: str = ""
    size: str = ""
    status: str = ""


class Stage(Protocol):
    name: str

    def identity(self) -> dict:
        """Everything the stage's result depends on, by content."""

    def status(self) -> Status:
        """Whether its result is there and made from this identity."""

    def plan(self) -> list[PlanRow]:
        """What running it would do, without doing it (no teacher weights read)."""
