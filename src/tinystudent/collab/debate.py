"""Debate between small models: they read each other's answers and reasons, then vote.

After Du et al. 2023 ("Improving Factuality and Reasoning in Language Models through Multiagent
Debate", arXiv 2305.14325), with our own prompts:

- Round 0: every member answers each question on its own, reasoning briefly step by step and
  ending with "The answer is (X)".
- Rounds 1 .. rounds-1: every member sees the question again with the other members' previous
  answers (their reasoning, cut to `rationale_chars`, and the option it picked) and its own
  previous answer, and answers again.
- The final answer is the majority vote of the last round. Answers that name no option do not
  vote. A tie goes to the tied option named by the earliest member in `members` order (members
  generate free text, so there is no confidence to compare; member order is deterministic and
  the caller can put the strongest member first). No vote at all gives no answer (wrong).
- A member whose text names no option (small models often ramble) still answers: its option is
  the one it finds most likely after its own text and "The answer is", scored like evaluation
  scores choices (`pick_unparsed=True`, the default). How many answers were picked this way is
  kept per round in the settings, and the scoring time counts in the group's latency.

Generation is greedy by default (`evaluation.generative.generate_texts`), so a debate is
reproducible. The cost of the group: parameters and disk add up over members; latency per
question is the wall time all members spent on it over all rounds; peak memory is measured once
over the whole debate, during which every member is held (so it is the group's real peak, not a
sum of separately measured peaks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tinystudent.collab.ensemble import sum_costs
from tinystudent.collab.results import group_eval_result
from tinystudent.evaluation.cost import LatencyMeter, MemoryMeter, model_cost
from tinystudent.evaluation.evaluate import EvalResult, Prediction
from tinystudent.evaluation.generative import extract_choice, generate_texts, render_prompt
from tinystudent.evaluation.prompts import LETTERS, lettered_question
from tinystudent.evaluation.scoring import score_choices
from tinystudent.evaluation.stats import majority_baseline
from tinystudent.models.loading import LoadedModel
from tinystudent.models.requests import ChoiceRequest
from tinystudent.tasks.schema import Example, data_hash

FIRST_INSTRUCTION = "Explain your reasoning briefly, step by step, then finish with 'The answer is (X)'."
DEBATE_INSTRUCTION = (
    "Use the other agents' reasoning as extra advice: it may be wrong. Explain "
    "your reasoning briefly, step by step, then finish with 'The answer is (X)'."
)

# (member, prompts) -> one generated text per prompt
GenerateFn = Callable[[LoadedModel, list[str]], list[str]]


@dataclass(kw_only=True)
class DebateResult:
    """What a debate produced.

    Attributes:
        members: the members' names, in member order.
        predictions: the final answer per question (majority vote of the last round; None when
            no member named an option).
        correct: whether each final answer is the gold one.
        acc: share of questions answered correctly.
        answers: [round][member][question] the option each member picked (None: unparsed).
        texts: [round][member][question] what each member wrote.
        round_votes: [round][question] the vote of each round (round 0 = independent answers).
        cost: the group's cost (see the module docstring).
        settings: rounds, max_new_tokens, rationale_chars, tie-break rule.
    """

    members: list[str]
    predictions: list[int | None]
    correct: list[bool]
    acc: float
    answers: list[list[list[int | None]]]
    texts: list[list[list[str]]]
    round_votes: list[list[int | None]]
    cost: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def round_acc(self, golds: Sequence[int]) -> list[float]:
        """Accuracy of each round's vote: does debating help?"""
        return [sum(v == g for v, g in zip(votes, golds)) / len(golds) for votes in self.round_votes]


def vote(answers: Sequence[int | None]) -> int | None:
    """Majority of the options named; a tie goes to the one named by the earliest member."""
    named = [a for a in answers if a is not None]
    if not named:
        return None
    counts = {a: named.count(a) for a in named}
    most = max(counts.values())
    return next(a for a in named if counts[a] == most)  # `named` keeps member order


def first_prompt(example: Example) -> str:
    return f"{lettered_question(example)}\n{FIRST_INSTRUCTION}"


def debate_prompt(
    example: Example, own: tuple[str, int | None], others: Sequence[tuple[str, int | None]], rationale_chars: int
) -> str:
    """The question, the other members' previous answers and the member's own previous one."""
    parts = [lettered_question(example), "", "Answers from other agents:"]
    for number, (text, answer) in enumerate(others, start=1):
        parts.append(f"Agent {number}: {_shown(text, answer, rationale_chars)}")
    parts += ["", f"Your previous answer: {_shown(*own, rationale_chars)}", "", DEBATE_INSTRUCTION]
    return "\n".join(parts)


def _shown(text: str, answer: int | None, rationale_chars: int) -> str:
    reasoning = " ".join(text.split())
    if len(reasoning) > rationale_chars:
        reasoning = reasoning[:rationale_chars].rsplit(" ", 1)[0] + " ..."
    picked = f"({LETTERS[answer]})" if answer is not None else "no clear option"
    return f"{reasoning or '(no reasoning)'} [picked: {picked}]"


def greedy_generate(
    max_new_tokens: int, batch_size: int
) -> Callable[[LoadedModel, list[str], LatencyMeter], list[str]]:
    """The default generation: each member's chat template, greedy decoding, timed per batch."""

    def generate(member: LoadedModel, prompts: list[str], latency: LatencyMeter) -> list[str]:
        rendered = [render_prompt(member.tokenizer, p) for p in prompts]
        return generate_texts(
            member.model,
            member.tokenizer,
            member.adapter,
            rendered,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=latency.record,
        )

    return generate


def _run_member(
    member: LoadedModel, prompts: list[str], generate: GenerateFn | None, default, latency: LatencyMeter
) -> list[str]:
    if generate is None:
        return default(member, prompts, latency)
    began = time.perf_counter()
    texts = list(generate(member, prompts))
    latency.record(len(prompts), time.perf_counter() - began)
    if len(texts) != len(prompts):
        raise ValueError(f"the generate function returned {len(texts)} texts for {len(prompts)} prompts")
    return texts


def debate(
    members: Sequence[LoadedModel],
    examples: Sequence[Example],
    rounds: int = 2,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    rationale_chars: int = 600,
    generate: GenerateFn | None = None,
    pick_unparsed: bool = True,
) -> DebateResult:
    """Let `members` debate every question for `rounds` rounds, then vote.

    Args:
        members: two or more loaded causal or seq2seq models, in tie-break order.
        examples: the questions.
        rounds: answering rounds in all, the first (independent answers) included [2]; 1 means
            no debate, only a vote over independent answers.
        max_new_tokens: most tokens each answer may have [128].
        batch_size: prompts per generation batch [8].
        rationale_chars: how much of another member's reasoning is shown [600 characters].
        generate: replaces the default greedy generation, `(member, prompts) -> texts`.
        pick_unparsed: give a member whose text names no option the option it scores highest
            after its own text (True); False leaves it without a vote.
    """
    if len(members) < 2:
        raise ValueError(f"a debate needs at least two members, got {len(members)}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if not examples:
        raise ValueError("a debate needs at least one question")
    for member in members:
        if not member.adapter.generates:
            raise ValueError(f"{member.name} is an {member.kind} model: it cannot write answers for a debate")
    default = greedy_generate(max_new_tokens, batch_size)
    latencies = [[LatencyMeter() for _ in range(rounds)] for _ in members]
    memory = MemoryMeter(members[0].device)
    texts: list[list[list[str]]] = []
    answers: list[list[list[int | None]]] = []
    picked_by_likelihood: list[int] = []
    with memory.measure():
        for round_index in range(rounds):
            round_texts, round_answers, picked = [], [], 0
            for m, member in enumerate(members):
                prompts = [
                    _prompt_for(ex, q, m, round_index, texts, answers, rationale_chars) for q, ex in enumerate(examples)
                ]
                member_texts = _run_member(member, prompts, generate, default, latencies[m][round_index])
                member_answers = [extract_choice(t, ex.choices) for t, ex in zip(member_texts, examples)]
                if pick_unparsed:
                    picked += _pick_unparsed(
                        member, examples, prompts, member_texts, member_answers, latencies[m][round_index], batch_size
                    )
                round_texts.append(member_texts)
                round_answers.append(member_answers)
            texts.append(round_texts)
            answers.append(round_answers)
            picked_by_likelihood.append(picked)
    round_votes = [
        [vote([answers[r][m][q] for m in range(len(members))]) for q in range(len(examples))] for r in range(rounds)
    ]
    final = round_votes[-1]
    correct = [p == ex.answer for p, ex in zip(final, examples)]
    settings = {
        "rounds": rounds,
        "max_new_tokens": max_new_tokens,
        "rationale_chars": rationale_chars,
        "tie_break": "earliest member",
        "members": [m.name for m in members],
        "member_identities": [m.resolved.identity for m in members],
        "generation": "greedy" if generate is None else "custom",
        "unparsed_answers": "picked by likelihood" if pick_unparsed else "no vote",
        "picked_by_likelihood_per_round": picked_by_likelihood,
    }
    return DebateResult(
        members=[m.name for m in members],
        predictions=final,
        correct=correct,
        acc=sum(correct) / len(correct),
        answers=answers,
        texts=texts,
        round_votes=round_votes,
        cost=_group_cost(members, latencies, memory, batch_size),
        settings=settings,
    )


def _pick_unparsed(
    member: LoadedModel,
    examples: Sequence[Example],
    prompts: list[str],
    texts: list[str],
    answers: list[int | None],
    latency: LatencyMeter,
    batch_size: int,
) -> int:
    """Fill in, in place, the options of texts that named none; returns how many."""
    missing = [q for q, a in enumerate(answers) if a is None]
    if not missing:
        return 0
    requests = [
        ChoiceRequest(
            f"{render_prompt(member.tokenizer, prompts[q])}{texts[q]}\nThe answer is",
            [f" ({LETTERS[c]}) {choice}" for c, choice in enumerate(examples[q].choices)],
        )
        for q in missing
    ]
    began = time.perf_counter()
    scores = score_choices(member.model, member.tokenizer, member.adapter, requests, batch_size=batch_size)
    share = (time.perf_counter() - began) / len(missing)
    for q, row in zip(missing, scores):
        answers[q] = max(range(len(row)), key=row.__getitem__)
        latency.add(q, share)
    return len(missing)


def _prompt_for(example: Example, q: int, m: int, round_index: int, texts, answers, rationale_chars: int) -> str:
    if round_index == 0:
        return first_prompt(example)
    previous_texts, previous_answers = texts[round_index - 1], answers[round_index - 1]
    others = [(previous_texts[o][q], previous_answers[o][q]) for o in range(len(previous_texts)) if o != m]
    return debate_prompt(example, (previous_texts[m][q], previous_answers[m][q]), others, rationale_chars)


def _group_cost(
    members: Sequence[LoadedModel], latencies: list[list[LatencyMeter]], memory: MemoryMeter, batch_size: int
) -> dict:
    """Summed member costs; latency per question over all members and rounds; the group peak."""
    member_costs = []
    for member, meters in zip(members, latencies):
        merged = _merge_latency(meters)
        member_costs.append(model_cost(member.model, member.resolved.path, memory, merged, batch_size))
    cost = sum_costs(member_costs)
    cost.update(_merge_latency([meter for meters in latencies for meter in meters]).summary())
    cost["peak_memory_mb"] = memory.peak_mb
    cost["peak_memory_scope"] = f"{memory.scope}, whole debate with all members held"
    return cost


def _merge_latency(meters: Sequence[LatencyMeter]) -> LatencyMeter:
    """One meter whose per-question time is the sum over `meters` (each covers every question once)."""
    merged = LatencyMeter()
    merged.per_question_s = [sum(times) for times in zip(*(m.per_question_s for m in meters))]
    merged.total_s = sum(m.total_s for m in meters)
    merged.questions = len(merged.per_question_s)
    return merged


def debate_eval_result(
    result: DebateResult, examples: Sequence[Example], task: str, split: str, name: str | None = None
) -> EvalResult:
    """The debate's final answers as an `EvalResult` (texts: the last round's, member by member)."""

    name = name or f"debate-{result.settings['rounds']}r({'+'.join(result.members)})"
    last = result.texts[-1]
    predictions = [
        Prediction(
            ex.id,
            ex.answer,
            pred,
            pred,
            None,
            "\n\n".join(f"[{member}] {last[m][q]}" for m, member in enumerate(result.members)),
        )
        for q, (ex, pred) in enumerate(zip(examples, result.predictions))
    ]
    settings = {**result.settings, "group": "debate", "round_acc": result.round_acc([ex.answer for ex in examples])}
    return group_eval_result(
        name,
        task,
        split,
        data_hash(list(examples)),
        majority_baseline(list(examples))["acc"],
        predictions,
        "debate",
        result.cost,
        settings,
    )
