"""Prompt strategies: what a teacher is asked, as templates the user can replace.

| strategy | the teacher sees | it writes |
|---|---|---|
| `zero_shot` | the question and lettered choices | the answer's letter |
| `few_shot` | k solved questions, then the question | the answer's letter |
| `cot` | the question, "Let's think step by step" | reasoning, then "Thus, the answer is (X)" |
| `teacher_forcing_cot` | k solved questions, the question, the GOLD answer | why the gold answer is right |

`teacher_forcing_cot` is TinyLLM's prompt (Tian et al. 2024, arXiv 2402.04616): the teacher is
told the gold answer and explains it, with k in-context examples drawn at random from the
training split. The draw is seeded per question (a hash of the seed and the question's id), so a
question's prompt does not depend on which other questions are in the run.

Templates are `str.format` strings. Fields: `{question}`, `{context}`, `{choices}` (one
`(A) text` line each), `{question_block}` (context, question and choices as the teacher sees
them), `{gold_letter}`, `{gold_text}`, `{letters}` ("A, B, C or D") and, in the main template only,
`{shots}` (the rendered in-context examples). A shot template gets the same fields for its
example plus `{rationale}` (the example's reference rationale, or "").
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

from tinystudent.evaluation.prompts import LETTERS
from tinystudent.tasks.schema import Example

QUESTION_BLOCK = "{context_line}Q: {question}\nAnswer Choices:\n{choices}"
FIELDS = {"question", "context", "context_line", "choices", "question_block", "gold_letter", "gold_text", "letters"}
SHOT_FIELDS = FIELDS | {"rationale"}
MAIN_FIELDS = FIELDS | {"shots"}

# Text a model writes when it starts a new question instead of stopping.
RUN_ON_STOPS = ("\nQ:", "\nQuestion:")


@dataclass(frozen=True)
class Strategy:
    """A prompt strategy.

    Attributes:
        name: how it is called (`teacher_forcing_cot`, ...).
        template: the prompt for one question.
        shot_template: how one in-context example is shown ("" when the strategy uses none).
        uses_shots: whether k in-context examples are drawn.
        shows_gold: whether the teacher is told the gold answer (its stated answer then only
            checks that it followed the instruction).
        writes_rationale: whether the output is a rationale (else a short answer).
        stop: strings that end generation.
    """

    name: str
    template: str
    shot_template: str
    uses_shots: bool
    shows_gold: bool
    writes_rationale: bool
    stop: tuple[str, ...] = RUN_ON_STOPS


ANSWER_SHOT = "{question_block}\nAnswer: ({gold_letter}) {gold_text}\n\n"
FORCED_SHOT = (
    "{question_block}\nThe correct answer is ({gold_letter}) {gold_text}.\n"
    "A: {rationale}Thus, the answer is ({gold_letter}) {gold_text}.\n\n"
)

STRATEGIES: dict[str, Strategy] = {
    "zero_shot": Strategy(
        "zero_shot",
        "{question_block}\nAnswer with the letter of the correct option ({letters}).\nAnswer:",
        "",
        uses_shots=False,
        shows_gold=False,
        writes_rationale=False,
    ),
    "few_shot": Strategy(
        "few_shot",
        "{shots}{question_block}\nAnswer with the letter of the correct option ({letters}).\nAnswer:",
        ANSWER_SHOT,
        uses_shots=True,
        shows_gold=False,
        writes_rationale=False,
    ),
    "cot": Strategy(
        "cot",
        '{question_block}\nThink step by step, then finish with "Thus, the answer is (X)" where X '
        "is the letter of the correct option.\nA: Let's think step by step.",
        "",
        uses_shots=False,
        shows_gold=False,
        writes_rationale=True,
    ),
    "teacher_forcing_cot": Strategy(
        "teacher_forcing_cot",
        "{shots}{question_block}\nThe correct answer is ({gold_letter}) {gold_text}.\n"
        "Explain step by step why this answer is correct, then finish with "
        '"Thus, the answer is ({gold_letter})".\nA: Let\'s think step by step.',
        FORCED_SHOT,
        uses_shots=True,
        shows_gold=True,
        writes_rationale=True,
    ),
}


# Free-form questions (no choices; GSM8K): the same strategies, asked as lm-eval's gsm8k_cot asks
# ("Q: ...\nA:"), finishing with "The answer is N." so `evaluation.freeform` reads the answer.
FREE_FORM_ANSWER_SHOT = "Q: {question}\nA: The answer is {gold_text}.\n\n"
FREE_FORM_FORCED_SHOT = (
    "Q: {question}\nThe correct answer is {gold_text}.\nA: {rationale}The answer is {gold_text}.\n\n"
)
FREE_FORM: dict[str, tuple[str, str]] = {
    "zero_shot": ("{context_line}Q: {question}\nA: The answer is", ""),
    "few_shot": ("{shots}{context_line}Q: {question}\nA: The answer is", FREE_FORM_ANSWER_SHOT),
    "cot": ("{context_line}Q: {question}\nA: Let's think step by step.", ""),
    "teacher_forcing_cot": (
        "{shots}{context_line}Q: {question}\nThe correct answer is {gold_text}.\n"
        'Explain step by step how to reach this answer, then finish with "The answer is {gold_text}."\n'
        "A: Let's think step by step.",
        FREE_FORM_FORCED_SHOT,
    ),
}


def _check_template(template: str, allowed: set[str], what: str) -> None:
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{what} is not a valid format string ({err}); write literal braces as {{{{ }}}}") from None
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(f"{what} uses unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def get_strategy(name: str, template: str | None = None, shot_template: str | None = None) -> Strategy:
    """A strategy by name, with the user's templates in place of the default ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    strategy = STRATEGIES[name]
    if template is not None:
        _check_template(template, MAIN_FIELDS, f"the {name} template")
        strategy = replace(strategy, template=template)
    if shot_template is not None:
        _check_template(shot_template, SHOT_FIELDS, f"the {name} shot template")
        strategy = replace(strategy, shot_template=shot_template)
    return strategy


def question_fields(example: Example) -> dict:
    """The template fields describing one question (a free-form one has no choices and no
    letters; its gold text is its answer)."""
    context_line = f"Context: {example.context}\n" if example.context else ""
    if example.free_form:
        block = f"{context_line}Q: {example.question}"
        return {
            "question": example.question,
            "context": example.context or "",
            "context_line": context_line,
            "choices": "",
            "question_block": block,
            "gold_letter": "",
            "gold_text": example.answer_text,
            "letters": "",
        }
    letters = LETTERS[: len(example.choices)]
    choices = "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(example.choices))
    block = QUESTION_BLOCK.format(context_line=context_line, question=example.question, choices=choices)
    listed = ", ".join(letters[:-1]) + f" or {letters[-1]}" if len(letters) > 1 else letters
    return {
        "question": example.question,
        "context": example.context or "",
        "context_line": context_line,
        "choices": choices,
        "question_block": block,
        "gold_letter": letters[example.answer],
        "gold_text": example.choices[example.answer],
        "letters": listed,
    }


def for_question(strategy: Strategy, example: Example) -> Strategy:
    """The strategy as it asks this question: its free-form templates for a question with no
    choices (unless the user gave templates of their own)."""
    if not example.free_form or strategy.name not in FREE_FORM or strategy != STRATEGIES.get(strategy.name):
        return strategy
    template, shot_template = FREE_FORM[strategy.name]
    return replace(strategy, template=template, shot_template=shot_template)


def render_shot(strategy: Strategy, shot: Example) -> str:
    rationale = (shot.rationale.strip() + " ") if shot.rationale else ""
    return for_question(strategy, shot).shot_template.format(**question_fields(shot), rationale=rationale)


def build_prompt(strategy: Strategy, example: Example, shots: list[Example]) -> str:
    """The prompt for one question (before any chat template)."""
    rendered = "".join(render_shot(strategy, shot) for shot in shots)
    return for_question(strategy, example).template.format(**question_fields(example), shots=rendered)
