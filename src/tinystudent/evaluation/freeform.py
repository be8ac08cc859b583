"""Free-form answers (GSM8K's numbers, short strings): prompts, answer extraction and exact match,
by lm-evaluation-harness's conventions so that a score here means what it means there.

A generation is cut at its first stop sequence (`STOPS`), then its answer is extracted two ways,
as lm-eval's `gsm8k_cot` task does:

- `strict`: the number in "The answer is N." (the form every few-shot exemplar ends with);
- `flexible`: the last number anywhere in the output.

Both extractions and the comparison (`regexes_to_ignore`, case folded) repeat lm-eval's filters
and `exact_match` metric; `tests/evaluation/test_freeform.py` runs lm-eval's own functions on the same
outputs. One addition, which the numbers of GSM8K need and lm-eval lacks: two numbers that are
equal as decimals ("18.0", "18.00" and "18") match. A gold answer that is not a number is matched
by its text: strictly after "The answer is", flexibly as the output's last line.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources

from tinystudent.tasks.formats import plain_decimal
from tinystudent.tasks.schema import FREE_FORM, Example

STRICT = r"The answer is (\-?[0-9\.\,]+)."  # lm-eval gsm8k_cot, filter "strict-match"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # lm-eval gsm8k_cot, filter "flexible-extract", last match
STRICT_TEXT = r"The answer is (.+?)\.?\s*$"  # a non-numeric gold answer: the rest of that line
IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")  # lm-eval gsm8k's regexes_to_ignore
INVALID = "[invalid]"  # what lm-eval's regex filter returns when nothing matches
STOPS = ("Q:", "</s>", "<|im_end|>")  # lm-eval gsm8k_cot's `until`
EXTRACTIONS = ("strict", "flexible")
ZERO_SHOT_COT = "Let's think step by step."


def regex_extract(text: str, pattern: str, group_select: int = 0) -> str:
    """The answer `pattern` finds in `text`, as lm-eval's `RegexFilter` returns it: the match
    `group_select` picks (-1: the last), its first non-empty group, stripped; `INVALID` when there
    is none."""
    found = re.findall(pattern, text, flags=re.MULTILINE)
    if not found:
        return INVALID
    match = found[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        match = groups[0] if groups else INVALID
    return match.strip()


def is_number(text: str) -> bool:
    return _decimal(normalise(text)) is not None


def extract(text: str, how: str, numeric: bool = True) -> str:
    """One output's answer by `how` (`strict` or `flexible`)."""
    if how not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {how!r}")
    if numeric:
        return regex_extract(text, STRICT) if how == "strict" else regex_extract(text, FLEXIBLE, -1)
    if how == "strict":
        return regex_extract(text, STRICT_TEXT, -1)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else INVALID


def _decimal(text: str) -> Decimal | None:
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def normalise(answer: str) -> str:
    """An answer as exact match compares it: lm-eval's `regexes_to_ignore` removed (thousands
    commas, `$`, anything up to `#### `, one final period), lower case; a number in its plain
    decimal form, so "18.0" reads "18"."""
    for pattern in IGNORED:
        answer = re.sub(pattern, "", answer)
    answer = answer.strip().lower()
    number = _decimal(answer)
    return answer if number is None else plain_decimal(number)


def matches(answer: str, gold: str) -> bool:
    """Exact match of an extracted answer and a gold one (`normalise`); `INVALID` never matches."""
    return answer != INVALID and normalise(answer) == normalise(gold)


@dataclass(frozen=True)
class Judged:
    """One free-form output, judged both ways."""

    strict: str
    flexible: str
    strict_correct: bool
    flexible_correct: bool


def judge(text: str, gold: str) -> Judged:
    """Extract `text`'s answer both ways and compare each with `gold`."""
    numeric = is_number(gold)
    strict, flexible = extract(text, "strict", numeric), extract(text, "flexible", numeric)
    return Judged(strict, flexible, matches(strict, gold), matches(flexible, gold))


def final_answer(text: str, gold: str) -> tuple[str, bool] | None:
    """What a text (a teacher's rationale) states as its final answer, strictly ("The answer is
    N.") or else flexibly (its last number), and whether that is `gold`; None when it states none."""
    judged = judge(text, gold)
    for stated, correct in ((judged.strict, judged.strict_correct), (judged.flexible, judged.flexible_correct)):
        if stated != INVALID:
            return stated, correct
    return None


def majority(answers: list[str]) -> str:
    """The answer most of `answers` give, compared as exact match compares them (`normalise`),
    ties going to the one given first (as lm-eval's `majority_vote`); answers that could not be
    read (`INVALID`) vote only when no answer could (lm-eval counts them as a vote)."""
    readable = [a for a in answers if a != INVALID] or [INVALID]
    counts = Counter(normalise(a) for a in readable)
    top = max(counts.values())
    return next(a for a in readable if counts[normalise(a)] == top)


def vote(judged: list[Judged], gold: str) -> Judged:
    """One verdict from several outputs' (self-consistency): each extraction's majority answer,
    compared with `gold`. A single output's verdict is its own."""
    if len(judged) == 1:
        return judged[0]
    strict, flexible = majority([j.strict for j in judged]), majority([j.flexible for j in judged])
    return Judged(strict, flexible, matches(strict, gold), matches(flexible, gold))


def cut_at_stops(text: str, stops: tuple[str, ...] = STOPS) -> str:
    """`text` up to its first stop sequence, as lm-eval's `generate_until` returns it."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


# --- prompts ---------------------------------------------------------------------------------


ANSWER_IS = "The answer is"


def gsm8k_exemplars() -> list[Example]:
    """The eight chain-of-thought exemplars of Wei et al. (2022), as lm-eval's `gsm8k_cot` uses
    them (`tasks/data/gsm8k_cot_exemplars.json`), as solved examples: the steps are the rationale,
    the number after "The answer is" the gold answer."""
    raw = resources.files("tinystudent.tasks").joinpath("data/gsm8k_cot_exemplars.json").read_text("utf-8")
    shots = []
    for i, row in enumerate(json.loads(raw)["exemplars"]):
        steps, final = row["target"].rsplit(ANSWER_IS, 1)
        shots.append(
            Example(
                f"gsm8k-cot-exemplar-{i}",
                row["question"],
                (),
                FREE_FORM,
                rationale=steps.strip(),
                target=final.strip().rstrip("."),
            )
        )
    return shots


def solution_text(target: str, rationale: str | None = None) -> str:
    """A solved question's answer as an in-context example shows it and a student learns to write
    it: its worked solution on one line (when there is one), then "The answer is X." (unless the
    solution already ends so)."""
    final = f"{ANSWER_IS} {target}."
    if not rationale:
        return final
    steps = " ".join(line.strip() for line in rationale.splitlines() if line.strip())
    return steps if steps.rstrip(".").endswith(f"{ANSWER_IS} {target}") else f"{steps} {final}"


def shot_block(shot: Example, think: bool) -> str:
    return f"Q: {shot.question}\nA: {solution_text(shot.answer_text, shot.rationale if think else None)}\n\n"


def free_form_prompt(example: Example, shots: list[Example], think: bool) -> str:
    """lm-eval's `gsm8k_cot` layout: each solved example as "Q: ...\\nA: <solution>", a blank line
    after each, then "Q: <question>\\nA:" (zero-shot with `think`: "A: Let's think step by
    step."). Evidence, when the question has some, comes before its question."""
    query = f"Q: {example.question}\nA:"
    if think and not shots:
        query += f" {ZERO_SHOT_COT}"
    if example.context:
        query = f"{example.context}\n{query}"
    return "".join(shot_block(shot, think) for shot in shots) + query
