"""Cleaning teacher text: cut where it runs on, trim to a token budget, read its stated answer.

Teachers, LLaMA-2 above all, keep writing after the rationale: a new "Q:", a list of
"Questions:", or the question again. What follows is not about this question, so it is cut.
"""

from __future__ import annotations

import re
from typing import Callable

from tinystudent.evaluation.prompts import LETTERS

RUN_ON = re.compile(r"\n\s*(?:Q|Questions?)\s*\d*\s*[:.)]|\n\s*Answer Choices\s*:|\n\s*Context\s*:", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
THINK_PREFIX = "Let's think step by step."


def _question_line(question: str) -> str:
    """The part of a question a run-on repeats: its last line (BioASQ puts evidence first)."""
    lines = [line.strip() for line in question.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cut_run_on(text: str, question: str | None = None) -> str:
    """Cut at the first sign the text moved on: a line starting a new question ("Q:",
    "Question 2.", "Questions:", "Answer Choices:") or the question repeated on a line of its own."""
    cut = len(text)
    found = RUN_ON.search(text)
    if found:
        cut = found.start()
    repeated = _question_line(question or "")
    if len(repeated) >= 15:
        at = text.find("\n" + repeated[:60])
        if 0 <= at < cut:
            cut = at
    return text[:cut].strip()


UNIT_END = re.compile(r"(?<=[.!?])(?=\s)|(?<=\n)")
NUMBERING = re.compile(r"^\s*(?:step\s*\d+\s*[:.)-]|\d+\s*[.)]|[-*•])\s*", re.IGNORECASE)


def _unit_key(unit: str) -> str:
    return " ".join(NUMBERING.sub("", unit).lower().split())


def cut_repetition(text: str, min_words: int = 4) -> str:
    """Drop sentences and lines the text already said, and cut where it loops.

    Units are sentences and lines of at least `min_words` words, compared ignoring "Step 3:" or
    list numbering, case and spacing. A unit said before is dropped; two in a row mean the text
    is looping ("Step 4: Determine the symbol. Step 5: Determine the element. Step 6: Determine
    the symbol. ..." from a small teacher), so it is cut where the loop began.
    """
    pieces = UNIT_END.split(text)
    seen: set[str] = set()
    kept: list[str] = []
    streak_start = None
    for piece in pieces:
        key = _unit_key(piece)
        if len(key.split()) < min_words:
            kept.append(piece)
            continue
        if key not in seen:
            seen.add(key)
            kept.append(piece)
            streak_start = None
        elif streak_start is None:
            streak_start = len(kept)  # a repeat: drop it, and remember where a loop would begin
        else:
            return "".join(kept[:streak_start]).strip()
    return "".join(kept).strip()


def trim_to_budget(text: str, max_tokens: int, count_tokens: Callable[[str], int | None] | None = None) -> str:
    """At most `max_tokens` tokens (words when no tokenizer is at hand), ending at a sentence end
    when one falls in the second half of what is kept."""
    if max_tokens <= 0:
        raise ValueError(f"the rationale token budget must be positive, got {max_tokens}")
    words = text.split(" ")
    use_words = count_tokens is None or count_tokens(text) is None

    def count(piece: str) -> int:
        tokens = None if use_words or count_tokens is None else count_tokens(piece)
        return len(piece.split()) if tokens is None else tokens

    if count(text) <= max_tokens:
        return text
    low, high = 0, len(words)  # the longest word prefix within the budget
    while low < high:
        middle = (low + high + 1) // 2
        if count(" ".join(words[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    kept = " ".join(words[:low])
    if not kept:  # the first word alone is over the budget: keep as many characters as fit
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if count(text[:middle]) <= max_tokens else (low, middle - 1)
        return text[:low].strip()
    ends = [m.end() for m in SENTENCE_END.finditer(kept)]
    if ends and ends[-1] >= len(kept) // 2:
        kept = kept[: ends[-1]]
    return kept.strip()


def strip_think_prefix(text: str) -> str:
    """Drop a leading "Let's think step by step." (the prompt's trigger echoed back)."""
    stripped = text.lstrip()
    return stripped[len(THINK_PREFIX) :].lstrip(" .\n") if stripped.startswith(THINK_PREFIX) else stripped


def drop_unfinished(text: str) -> str:
    """Drop a last sentence cut off mid-way (text that hit its token limit), when a finished
    sentence or line ends in the second half of the text."""
    if not text or text.rstrip()[-1] in ".!?\"')]":
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)|\n", text)]
    return text[: ends[-1]].strip() if ends and ends[-1] >= len(text) // 2 else text


def clean_text(
    text: str,
    question: str | None = None,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int | None] | None = None,
    truncated: bool = False,
) -> str:
    """The whole clean-up: strip an echoed trigger, cut the run-on and any loop, drop a sentence
    cut off by the token limit (`truncated`), then trim to the token budget `max_tokens`."""
    cleaned = cut_repetition(cut_run_on(strip_think_prefix(text), question))
    if truncated:
        cleaned = drop_unfinished(cleaned)
    cleaned = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", cleaned).strip()
    return trim_to_budget(cleaned, max_tokens, count_tokens) if max_tokens else cleaned


def is_empty_rationale(text: str | None) -> bool:
    """No rationale at all: empty, a pandas "nan", or only the trigger phrase."""
    if text is None:
        return True
    body = strip_think_prefix(text).strip()
    return body == "" or body.lower() in ("nan", "none", "null")


def stated_answer(text: str | None, choices) -> int | None:
    """The choice a text states as its answer, None when it states none.

    Stricter than `evaluation.generative.extract_choice`, which also accepts any choice's text
    appearing anywhere (in a rationale "no" appears inside "not" and "known"). In order: the last
    "answer is (X)" / "answer: X"; the last "answer is <choice text>"; a letter opening a short
    answer ("B", "(B) carbon dioxide"); a short answer that is exactly one choice's text.
    """
    if not text:
        return None
    letters = LETTERS[: len(choices)]
    # "(b)" in any case, a bare letter only in capitals ("the answer is a bit ..." is no answer).
    pattern = rf"(?i:answer\s*(?:is|:)\s*(?:option\s*)?)(?:\(([{letters}{letters.lower()}])\)|([{letters}])(?![\w']))"
    found = re.findall(pattern, text)
    if found:
        return letters.index("".join(found[-1]).upper())
    lowered = [str(c).strip().lower() for c in choices]
    stated = [
        (m.start(), i)
        for i, choice in enumerate(lowered)
        if choice
        for m in re.finditer(rf"answer\s*(?:is|:)\s*[\"']?{re.escape(choice)}(?!\w)", text, re.IGNORECASE)
    ]
    if stated:
        return max(stated)[1]
    words = text.split()
    if len(words) <= 12:
        opening = re.match(rf"\s*\(?([{letters}])(?:[).:\s]|$)", text)
        if opening:
            return letters.index(opening.group(1))
        exact = [i for i, choice in enumerate(lowered) if choice and text.strip(" .\n").lower() == choice]
        if len(exact) == 1:
            return exact[0]
    return None
