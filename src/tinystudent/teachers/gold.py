"""`gold_solutions`: the worked solutions a dataset ships (GSM8K's) as a teacher of their own, so a
study can set human rationales against those a model writes."""

from __future__ import annotations

from tinystudent.tasks.schema import Example

GOLD_SOLUTIONS = "gold_solutions"


def gold_solutions(examples: list[Example]) -> dict[str, str]:
    """Example id -> its shipped solution, for the examples that have one.

    Raises:
        ValueError: none of them has one (the task ships no solutions)."""
    found = {ex.id: ex.rationale for ex in examples if ex.rationale and ex.rationale.strip()}
    if not found:
        raise ValueError(
            f"the teacher {GOLD_SOLUTIONS!r} is the task's own worked solutions, and none of its "
            f"{len(examples)} training questions has one: name a teacher that writes rationales"
        )
    return found
