"""Local teachers, prompt strategies, clean-up and the cache (each output computed once)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tinystudent.evaluation.prompts import choice_context, choice_continuations, draw_shots
from tinystudent.evaluation.scoring import score_choices
from tinystudent.models import load_model
from tinystudent.models.requests import ChoiceRequest
from tinystudent.store import Store
from tinystudent.tasks import Example
from tinystudent.teachers import (
    LocalTeacher,
    cache,
    get_strategy,
    load_rationales,
    make_teacher,
    teach,
    teacher_choice_logprobs,
)
from tinystudent.teachers.cleanup import clean_text, cut_run_on, trim_to_budget
from tinystudent.teachers.prompts import build_prompt

SUBJECTS = [
    "plants",
    "rocks",
    "rivers",
    "stars",
    "birds",
    "clouds",
    "metals",
    "seeds",
    "storms",
    "magnets",
    "insects",
    "oceans",
    "glaciers",
    "volcanoes",
    "deserts",
    "forests",
]


def make_questions(n: int = 12) -> list[Example]:
    return [
        Example(
            f"q{i}",
            f"Which property of {SUBJECTS[i % len(SUBJECTS)]} matters most in case {i}?",
            ("mass", "colour", "age", "shape"),
            i % 4,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_teacher(tiny_causal):
    return LocalTeacher(load_model(str(tiny_causal), device="cpu"), batch_size=4)


def test_teacher_forcing_prompt_shows_gold_and_seeded_shots():
    questions = make_questions(10)
    strategy = get_strategy("teacher_forcing_cot")
    target = questions[3]
    shots = draw_shots(target, questions, 2, seed=0)
    assert len(shots) == 2 and target not in shots
    # the draw depends on the question and seed only, not on the pool's order or the run's size
    assert [s.id for s in draw_shots(target, list(reversed(questions)), 2, seed=0)] == [s.id for s in shots]
    assert {s.id for s in draw_shots(target, questions, 2, seed=1)} != {s.id for s in shots} or {
        s.id for s in draw_shots(target, questions, 2, seed=2)
    } != {s.id for s in shots}
    prompt = build_prompt(strategy, target, shots)
    assert "The correct answer is (D) shape." in prompt  # gold of q3 is index 3
    assert prompt.count("Answer Choices:") == 3 and prompt.endswith("Let's think step by step.")
    for shot in shots:
        assert shot.question in prompt and f"Thus, the answer is ({'ABCD'[shot.answer]})" in prompt
    with pytest.raises(ValueError, match="only 1 other"):
        draw_shots(questions[0], questions[:2], 2, 0)


def test_templates_can_be_replaced_and_are_checked():
    custom = get_strategy("cot", template="Solve: {question}\n{choices}\nReason:")
    prompt = build_prompt(custom, make_questions(1)[0], [])
    assert prompt.startswith("Solve: Which property") and "(A) mass" in prompt
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['answer'\]"):
        get_strategy("cot", template="{question} {answer}")
    with pytest.raises(ValueError, match="unknown strategy 'socratic'"):
        get_strategy("socratic")


def test_clean_up_cuts_run_on_and_trims():
    question = "Which gas do plants take in from the air?"
    text = (
        "Let's think step by step. Plants use carbon dioxide. Thus, the answer is (B).\n\n"
        "Q: Which gas do animals breathe out?\nAnswer Choices: (A) ..."
    )
    assert clean_text(text, question) == "Plants use carbon dioxide. Thus, the answer is (B)."
    repeated = f"Leaves take in CO2.\n{question}\n(A) oxygen"
    assert cut_run_on(repeated, question) == "Leaves take in CO2."
    assert cut_run_on("The question asks which gas do plants take in from the air? It is CO2.", question).endswith(
        "It is CO2."
    )  # quoting the question inside a sentence is not a run-on
    long = "One two three. Four five six seven. Eight nine ten eleven twelve."
    assert trim_to_budget(long, 8) == "One two three. Four five six seven."
    assert trim_to_budget(long, 100) == long


def test_second_identical_run_makes_no_model_calls(tiny_teacher, tmp_path):
    questions = make_questions(12)
    with Store(tmp_path / "cache.sqlite") as store:
        first = teach(tiny_teacher, questions, "toy", "teacher_forcing_cot", store, max_new_tokens=12)
        assert (first.generated, first.cached, first.failed, first.model_calls) == (12, 0, 0, 12)
        calls = tiny_teacher.calls
        second = teach(tiny_teacher, questions, "toy", "teacher_forcing_cot", store, max_new_tokens=12)
        assert tiny_teacher.calls == calls and second.model_calls == 0
        assert (second.generated, second.cached) == (0, 12)
        assert [o.text for o in second.outputs] == [o.text for o in first.outputs]
        assert [o.cache_key for o in second.outputs] == [o.cache_key for o in first.outputs]
        changed = teach(tiny_teacher, questions[:4], "toy", "teacher_forcing_cot", store, max_new_tokens=13)
        assert (changed.generated, changed.cached) == (4, 0)  # a changed setting misses
        reshuffled = teach(tiny_teacher, questions[:4], "toy", "teacher_forcing_cot", store, max_new_tokens=12, seed=5)
        assert reshuffled.generated == 4  # another seed draws other in-context examples: new prompts
        rows = store.db.execute("SELECT COUNT(*) FROM teacher_outputs").fetchone()[0]
        assert rows == 12 + 4 + 4
        stored = load_rationales(store, str(tiny_teacher.name), "toy", "teacher_forcing_cot")
        assert len(stored) == 12


def test_greedy_ignores_the_seed_and_clean_up_changes_need_no_calls(tiny_teacher, tmp_path):
    questions = make_questions(6)
    with Store(tmp_path / "cache.sqlite") as store:
        teach(tiny_teacher, questions, "toy", "cot", store, max_new_tokens=24)
        calls = tiny_teacher.calls
        other_seed = teach(tiny_teacher, questions, "toy", "cot", store, max_new_tokens=24, seed=9)
        assert other_seed.cached == 6  # greedy output does not depend on the seed
        trimmed = teach(tiny_teacher, questions, "toy", "cot", store, max_new_tokens=24, max_rationale_tokens=3)
        assert tiny_teacher.calls == calls and trimmed.cached == 6
        assert all(tiny_teacher.count_tokens(o.text) <= 3 for o in trimmed.outputs)
        assert all(len(o.meta["raw"]) >= len(o.text) for o in trimmed.outputs)
        assert load_rationales(store, tiny_teacher.name, "toy") == {o.example_id: o.text for o in trimmed.outputs}


def test_samples_do_not_depend_on_the_batch(tiny_causal, tmp_path):
    loaded = load_model(str(tiny_causal), device="cpu")
    questions = make_questions(6)
    texts = {}
    for batch_size in (1, 4):
        teacher = LocalTeacher(loaded, batch_size=batch_size)
        with Store(tmp_path / f"b{batch_size}.sqlite") as store:
            summary = teach(teacher, questions, "toy", "cot", store, max_new_tokens=10, temperature=1.0, seed=3)
        texts[batch_size] = [o.text for o in summary.outputs]
    assert texts[1] == texts[4]
    with Store(tmp_path / "other.sqlite") as store:
        other = teach(LocalTeacher(loaded), questions, "toy", "cot", store, max_new_tokens=10, temperature=1.0, seed=4)
    assert [o.text for o in other.outputs] != texts[1]


def test_two_writers_share_one_cache(tiny_causal, tmp_path):
    """Two connections (as two processes would) teaching the same questions at once: every row
    once, the same text whoever wrote it."""
    loaded = load_model(str(tiny_causal), device="cpu")
    questions = make_questions(10)
    db = tmp_path / "shared.sqlite"
    summaries = [None, None]

    def work(slot: int) -> None:
        with Store(db) as store:
            summaries[slot] = teach(
                LocalTeacher(loaded, batch_size=1 + slot), questions, "toy", "cot", store, max_new_tokens=16
            )

    threads = [threading.Thread(target=work, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(s is not None and s.failed == 0 for s in summaries)
    with Store(db) as store:
        assert store.db.execute("SELECT COUNT(*) FROM teacher_outputs").fetchone()[0] == 10
        final = teach(LocalTeacher(loaded), questions, "toy", "cot", store, max_new_tokens=16)
    assert final.cached == 10
    assert (
        [o.text for o in final.outputs]
        == [o.text for o in summaries[0].outputs]
        == [o.text for o in summaries[1].outputs]
    )


@pytest.mark.slow
def test_smollm2_explains_the_gold_answer_through_its_chat_template(smollm2, tmp_path):
    questions = [
        Example("sun", "Which of these is a star?", ("the Moon", "the Sun", "Mars", "a comet"), 1),
        Example(
            "ice",
            "What happens to water when it freezes?",
            ("it boils", "it becomes ice", "it turns to gas", "it vanishes"),
            1,
        ),
        Example("plants", "What do plants need to make food?", ("sunlight", "sand", "plastic", "noise"), 0),
    ]
    teacher = LocalTeacher(smollm2, batch_size=2)
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(
            teacher,
            questions[:2],
            "toy",
            "teacher_forcing_cot",
            store,
            train_examples=questions,
            k_shots=1,
            max_new_tokens=32,
        )
        prompt = store.db.execute("SELECT prompt FROM teacher_outputs LIMIT 1").fetchone()[0]
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("<|im_start|>assistant")
    assert "The correct answer is (B)" in prompt
    # A 135M teacher explains poorly, but it writes, and what it states is read and checked.
    for output, question in zip(summary.outputs, questions):
        assert len(output.text.split()) >= 3 and "<|im_end|>" not in output.text
        assert "\nQ:" not in output.text and output.meta["completion_tokens"] <= 32
        assert output.matches_gold == (None if output.answer is None else output.answer == question.answer)
    assert any(o.answer is not None for o in summary.outputs)


def test_choice_logprobs_equal_the_evaluation_scorer_and_are_cached(tiny_teacher, tmp_path):
    questions = make_questions(5)
    with Store(tmp_path / "cache.sqlite") as store:
        scores = teacher_choice_logprobs(tiny_teacher, questions, "toy", store)
        calls = tiny_teacher.calls
        assert teacher_choice_logprobs(tiny_teacher, questions, "toy", store) == scores
        assert tiny_teacher.calls == calls
    loaded = tiny_teacher.loaded
    requests = [ChoiceRequest(choice_context(q, "arc"), choice_continuations(q)) for q in questions]
    reference = score_choices(loaded.model, loaded.tokenizer, "causal", requests)
    for q, row in zip(questions, reference):
        assert scores[q.id] == pytest.approx(row, abs=1e-4)


def test_seq2seq_teacher_generates_and_scores(tiny_seq2seq, tmp_path):
    teacher = make_teacher(str(tiny_seq2seq), device="cpu", batch_size=3)
    questions = make_questions(4)
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(teacher, questions, "toy", "zero_shot", store, max_new_tokens=6)
        scores = teacher_choice_logprobs(teacher, questions, "toy", store)
    # A random model may say nothing: an empty output is a failure, never cached as an answer.
    assert summary.generated >= 1 and summary.generated + summary.failed == 4
    assert all("output was empty" in error for error in summary.errors)
    assert all(o.meta["completion_tokens"] <= 6 and o.text.strip() for o in summary.outputs)
    assert all(len(scores[q.id]) == 4 for q in questions)


def test_a_prompt_longer_than_the_context_is_fitted_not_failed(tiny_teacher, tmp_path):
    """A question longer than the teacher's context keeps its end (where it asks); one with long
    evidence keeps its whole question and loses the end of its evidence."""
    questions = make_questions(3) + [
        Example("huge", "why " * 600 + "is the sky blue?", ("a", "b"), 0),
        Example("evidence", "Is water wet?", ("yes", "no"), 0, "fact " * 900),
    ]
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(tiny_teacher, questions, "toy", "zero_shot", store, max_new_tokens=4)
        rows = {row["example_id"]: row["prompt"] for row in cache.rows_for(store, tiny_teacher.name, "toy")}
    assert (summary.generated, summary.failed, summary.truncated) == (5, 0, 2)
    for example_id in ("huge", "evidence"):
        assert tiny_teacher.count_tokens(rows[example_id]) + 4 <= 512
    assert "is the sky blue?" in rows["huge"] and "why why" in rows["huge"]
    assert "Q: Is water wet?" in rows["evidence"] and "fact fact" in rows["evidence"]


def test_make_teacher_checks_its_settings(tiny_causal):
    with pytest.raises(ValueError, match="local teacher settings: batchsize: Extra inputs"):
        make_teacher(str(tiny_causal), batchsize=4)
    with pytest.raises(ValueError, match="HTTP teacher settings: concurrency"):
        make_teacher("m", base_url="http://127.0.0.1:9/v1", concurrency=0)
    with pytest.raises(ValueError, match="give base_url too"):
        make_teacher(str(tiny_causal), api_key_env="KEY")
    with pytest.raises(ValueError, match="has no chat template"):
        make_teacher(str(tiny_causal), chat=True)


def test_teach_options_are_the_teacher_settings_fields(tmp_path, monkeypatch):
    """Each local and server teacher setting with a command-line form is a `teach` option, its
    default and description as help; make_teacher gets only the options given, of its kind."""
    import typer
    from typer.testing import CliRunner

    import tinystudent.teachers
    from tinystudent.cli import app
    from tinystudent.commands.options import config_fields
    from tinystudent.commands.teach import LOCAL_SETTINGS_IN_FILES_ONLY, SERVER_SETTINGS_IN_FILES_ONLY
    from tinystudent.teachers import HttpSettings, LocalSettings

    options = {p.name: p for p in typer.main.get_command(app).commands["teach"].params}
    fields = config_fields(LocalSettings, LOCAL_SETTINGS_IN_FILES_ONLY)
    fields += config_fields(HttpSettings, SERVER_SETTINGS_IN_FILES_ONLY)
    local = {"batch_size", "device", "dtype", "chat", "engine", "trust_remote_code"}
    assert {f.name for f in fields} == local | {"endpoint", "concurrency", "timeout", "max_retries", "identity"}
    for field in fields:
        option = options[field.name]
        assert option.default == field.field.default and option.help == field.field.description, field.name

    asked = []

    def stop(name, servers, api_key_env, **settings):
        asked.append((servers, settings))
        raise ValueError("stopped before loading the teacher")

    monkeypatch.setattr(tinystudent.teachers, "make_teacher", stop)
    task = write_task(tmp_path / "toy.jsonl", 4)
    args = ["teach", "--teacher", "m", "--task", str(task), "--db", str(tmp_path / "r.sqlite")]
    for server in ([], ["--base-url", "http://127.0.0.1:9/v1"]):
        result = CliRunner().invoke(app, [*args, "--batch-size", "2", "--concurrency", "3", *server])
        assert result.exit_code != 0 and "stopped before loading the teacher" in result.output
    assert asked == [(None, {"batch_size": 2}), ("http://127.0.0.1:9/v1", {"concurrency": 3})]


def write_task(path: Path, n: int) -> Path:
    rows = [
        {"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.choices[q.answer]}
        for q in make_questions(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cached_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM teacher_outputs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_teach_killed_with_sigkill_resumes_without_recomputing(tiny_causal, tmp_path):
    """`kill -9` in the middle of `tinystudent teach`; the next run finishes the rest."""
    task = write_task(tmp_path / "toy.jsonl", 16)
    db = tmp_path / "kill.sqlite"
    command = [
        sys.executable,
        "-m",
        "tinystudent",
        "teach",
        "--teacher",
        str(tiny_causal),
        "--task",
        str(task),
        "--split",
        "train",
        "--strategy",
        "cot",
        "--max-new-tokens",
        "64",
        "--batch-size",
        "1",
        "--db",
        str(db),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _cached_rows(db) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = _cached_rows(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = 13  # 80% of 16 questions in the seeded train split
    assert 2 <= saved < n, f"the run was not stopped mid-way ({saved} saved)"
    from typer.testing import CliRunner

    from tinystudent.cli import app

    done = CliRunner().invoke(app, command[3:])  # the resumed run, in this process
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"teacher", "task", "split", "n", "generated", "cached", "failed", "seconds"} <= set(result)
    assert (result["n"], result["cached"], result["generated"], result["failed"]) == (n, saved, n - saved, 0)
    assert result["model_calls"] == n - saved and result["split"] == "train"
    assert _cached_rows(db) == n
