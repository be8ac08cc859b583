"""Evaluation: the fast scorer agrees with the reference, metrics agree with hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tinystudent.evaluation import evaluate_model, paired_bootstrap, score_choices, score_choices_naive
from tinystudent.evaluation.generative import extract_choice
from tinystudent.evaluation.stats import bootstrap_ci, majority_baseline
from tinystudent.models import load_model
from tinystudent.models.requests import ChoiceRequest, encode_request
from tinystudent.store import Store
from tinystudent.tasks import Example

EXAMPLES = [
    Example("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide", "helium"), 1),
    Example("q2", "The sun is a", ("star", "planet", "moon", "comet"), 0),
    Example("q3", "Water boils at", ("one hundred degrees", "zero degrees"), 0),
    Example("q4", "", ("yes", "no"), 1),  # empty question: the prompt is still "Question: \nAnswer:"
]


def requests_for(examples):
    from tinystudent.evaluation.prompts import choice_context, choice_continuations

    return [ChoiceRequest(choice_context(ex, "arc"), choice_continuations(ex)) for ex in examples]


def test_fast_scorer_matches_one_forward_per_choice(tiny_causal):
    loaded = load_model(str(tiny_causal), device="cpu")
    requests = requests_for(EXAMPLES[:3])
    fast = score_choices(loaded.model, loaded.tokenizer, "causal", requests, batch_size=2)
    slow = score_choices_naive(loaded.model, loaded.tokenizer, requests)
    for row_fast, row_slow in zip(fast, slow):
        assert row_fast == pytest.approx(row_slow, abs=1e-4)


MIXED_REQUESTS = [ChoiceRequest("Question: Is it so?\nAnswer:", [" ", "!"])]  # one-token choices


def test_choices_in_their_prompts_row_score_as_one_forward_per_choice(tiny_causal):
    """One batch of prompts of different lengths (padded rows) with choices of several tokens and
    of one token, and a batch of one-token choices only (no choice token in the row: the
    mask-free path): every score equals the reference's."""
    from tinystudent.models.kinds import kind_adapter

    loaded = load_model(str(tiny_causal), device="cpu")
    requests = requests_for(EXAMPLES[:3]) + MIXED_REQUESTS
    encoded = [encode_request(loaded.tokenizer, r) for r in requests]
    assert [len(c) for c in encoded[3][1]] == [1, 1] and len({len(ctx) for ctx, _ in encoded}) > 2
    causal = kind_adapter("causal")
    expected = score_choices_naive(loaded.model, loaded.tokenizer, requests)
    in_rows = causal.score_encoded(loaded.model, loaded.tokenizer, encoded, torch.device("cpu"))
    one_token = causal.score_encoded(loaded.model, loaded.tokenizer, encoded[3:], torch.device("cpu"))
    for row, want in zip(in_rows + one_token, expected + expected[3:], strict=True):
        assert row == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("architecture", ["mistral", "qwen2-mixed"])
def test_sliding_window_models_score_as_one_forward_per_choice(tiny_causal, architecture):
    """Rows longer than the window: every layer slides (Mistral), or some do (Qwen2 with
    `max_window_layers`, one mask per layer type)."""
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    from tinystudent.models.kinds import kind_adapter

    tokenizer = load_model(str(tiny_causal), device="cpu").tokenizer
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    shape.update(num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    if architecture == "mistral":
        config = MistralConfig(sliding_window=8, **shape)
    else:
        config = Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1, **shape)
        assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    requests = requests_for(EXAMPLES[:3]) + MIXED_REQUESTS
    encoded = [encode_request(tokenizer, r) for r in requests]
    expected = score_choices_naive(model, tokenizer, requests)
    got = kind_adapter("causal").score_encoded(model, tokenizer, encoded, torch.device("cpu"))
    config.sliding_window = 4096
    unwindowed = score_choices_naive(model, tokenizer, requests)
    assert abs(unwindowed[2][0] - expected[2][0]) > 1e-3  # the window changes the scores here
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-4)


def test_loglikelihood_is_the_sum_of_token_logprobs(tiny_causal):
    """Check one choice's score by hand: log-softmax of a full forward, summed over its tokens."""
    loaded = load_model(str(tiny_causal), device="cpu")
    request = requests_for(EXAMPLES[:1])[0]
    context_ids, continuations = encode_request(loaded.tokenizer, request)
    ids = context_ids + continuations[1]
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].double()
    expected = 0.0
    for pos in range(len(context_ids), len(ids)):
        expected += (logits[pos - 1].log_softmax(-1))[ids[pos]].item()
    score = score_choices(loaded.model, loaded.tokenizer, "causal", [request])[0][1]
    assert score == pytest.approx(expected, abs=1e-4)


def test_acc_and_acc_norm_agree_with_stored_logprobs(tiny_causal):
    loaded = load_model(str(tiny_causal), device="cpu")
    result = evaluate_model(loaded, EXAMPLES, "toy", "test", batch_size=3)
    acc = acc_norm = 0
    for ex, pred in zip(EXAMPLES, result.predictions):
        scores = pred.choice_logprobs
        acc += max(range(len(scores)), key=scores.__getitem__) == ex.answer
        normed = [s / len(c) for s, c in zip(scores, ex.choices)]
        acc_norm += max(range(len(normed)), key=normed.__getitem__) == ex.answer
    assert result.acc == acc / len(EXAMPLES) and result.acc_norm == acc_norm / len(EXAMPLES)
    assert result.n == 4 and result.cost["params"] > 0 and result.cost["peak_memory_mb"] > 0
    assert result.cost["latency_ms_p50"] > 0 and result.cost["questions_per_s"] > 0


def test_seq2seq_and_encoder_models_score_choices(tiny_seq2seq, tiny_encoder):
    t5 = load_model(str(tiny_seq2seq), device="cpu")
    assert t5.kind == "seq2seq"
    result = evaluate_model(t5, EXAMPLES, "toy", "test")
    assert len(result.predictions[0].choice_logprobs) == 3
    assert all(s < 0 for p in result.predictions for s in p.choice_logprobs)
    bert = load_model(str(tiny_encoder), device="cpu")
    assert bert.kind == "encoder"
    result = evaluate_model(bert, EXAMPLES, "toy", "test")
    probs = [math.exp(s) for s in result.predictions[1].choice_logprobs]
    assert sum(probs) == pytest.approx(1.0) and result.acc_norm is None
    with pytest.raises(ValueError, match="encoder"):
        evaluate_model(bert, EXAMPLES, "toy", "test", mode="generate")


def test_generative_mode_counts_unparsed_answers(tiny_causal):
    loaded = load_model(str(tiny_causal), device="cpu")
    result = evaluate_model(loaded, EXAMPLES[:2], "toy", "test", mode="generate", batch_size=2)
    assert result.n == 2 and all(p.text is not None for p in result.predictions)
    assert result.unparsed == sum(p.pred is None for p in result.predictions)
    assert result.acc == sum(p.pred == p.gold for p in result.predictions) / 2


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is (B).", 1),
        ("answer: c", 2),
        ("B. carbon dioxide", 1),
        ("I think it is carbon dioxide", 1),
        ("no idea", None),
        ("A or B?", 0),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, ("oxygen", "carbon dioxide", "helium")) == expected


def test_intervals_and_baselines_by_hand():
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    low, high = bootstrap_ci([True, False] * 50)
    assert low < 0.5 < high and high - low < 0.25
    yes_no = [Example(str(i), "q", ("yes", "no"), int(i >= 82)) for i in range(123)]
    majority = majority_baseline(yes_no)
    assert (majority["acc"], majority["answer"]) == (82 / 123, "yes")
    assert majority["correct"] == [ex.answer_text == "yes" for ex in yes_no] and sum(majority["correct"]) == 82
    paired = paired_bootstrap([True, True, False, True], [False, True, False, False])
    assert paired["diff"] == pytest.approx(0.5) and paired["p_value"] < 0.2
    assert paired["ci95"][0] <= 0.5 <= paired["ci95"][1]


def test_store_keeps_every_prediction(tiny_causal, tmp_path):
    loaded = load_model(str(tiny_causal), device="cpu")
    result = evaluate_model(loaded, EXAMPLES, "toy", "test")
    with Store(tmp_path / "r.sqlite") as store:
        eid = store.save_evaluation(result)
        row = store.evaluation(eid)
        predictions = store.predictions(eid)
    assert row["acc"] == result.acc and row["data_hash"] == result.data_hash
    assert row["versions"]["torch"] == torch.__version__ and row["settings"]["model_identity"].startswith("sha256:")
    assert [p["example_id"] for p in predictions] == ["q1", "q2", "q3", "q4"]
    assert json.loads(predictions[0]["choice_logprobs"]) == pytest.approx(result.predictions[0].choice_logprobs)


def test_one_unit_has_one_stored_evaluation(tiny_causal, tmp_path):
    """A unit's second evaluation (a killed attempt's child had already stored one) replaces the
    first with its predictions; evaluations of other units and unfiled ones are kept."""
    import sqlite3

    result = evaluate_model(load_model(str(tiny_causal), device="cpu"), EXAMPLES, "toy", "test")
    with Store(tmp_path / "r.sqlite") as store:
        first = store.save_evaluation(result, "train:abc")
        again = store.save_evaluation(result, "train:abc")
        other = store.save_evaluation(result, "train:def")
        store.save_evaluation(result)
        store.save_evaluation(result)
        assert [e["id"] for e in store.evaluations(run_key="train:abc")] == [again]
        assert store.predictions(first) == [] and len(store.predictions(again)) == 4
        assert len(store.evaluations()) == 4 and other in {e["id"] for e in store.evaluations()}
        with pytest.raises(sqlite3.IntegrityError):
            store.db.execute(
                "INSERT INTO evaluations SELECT NULL, created, model, model_identity, task, split, "
                "mode, n, acc, acc_norm, ci_low, ci_high, majority_baseline, data_hash, run_key, "
                "cost, settings, versions FROM evaluations WHERE id = ?",
                (again,),
            )


def test_many_connections_open_a_new_database_at_once(tmp_path):
    """Several processes opening one new results file together all get in (switching a new file to
    WAL can report "locked" without waiting; CI once lost a teacher that way)."""
    import threading

    for trial in range(30):
        path = tmp_path / f"new{trial}.sqlite"
        errors: list[Exception] = []

        def open_and_write(slot: int, path=path, errors=errors) -> None:
            try:
                with Store(path) as store:
                    with store.transaction() as db:
                        db.execute("SELECT COUNT(*) FROM evaluations").fetchone()
            except Exception as error:  # collected, asserted below
                errors.append(error)

        threads = [threading.Thread(target=open_and_write, args=(slot,)) for slot in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], f"trial {trial}: {errors!r}"


@pytest.mark.slow
def test_real_smollm2_is_clearly_above_chance_on_arc_easy(smollm2):
    from tinystudent.tasks import load_task

    examples = load_task("arc_easy").split("validation")[:100]
    result = evaluate_model(smollm2, examples, "arc_easy", "validation", batch_size=16)
    chance = sum(1 / len(ex.choices) for ex in examples) / len(examples)
    assert result.ci95[0] > chance, (result.acc, result.ci95, chance)


def _free_form_result(golds: list[str], preds: list[str | None]):
    from tinystudent.evaluation.evaluate import EvalResult, Prediction

    predictions = [Prediction(f"q{i}", g, p, p) for i, (g, p) in enumerate(zip(golds, preds))]
    right = sum(p.correct for p in predictions) / len(predictions)
    return EvalResult(
        model="m", task="gsm8k", split="test", n=len(golds), acc=right, acc_norm=right, ci95=[0.0, 1.0],
        majority_baseline=0.0, mode="generate_cot", cost={}, data_hash="h", predictions=predictions,
    )  # fmt: skip


def test_free_form_answers_come_back_as_text(tmp_path):
    """A free-form answer is stored as the text it is ("18", "1.50", "007"), never turned into a
    number by the column's type; a choice index stays an integer."""
    from tinystudent.experiments.stored import stored_eval_result

    golds, preds = ["18", "1.50", "007", "yes"], ["18", "1.5", "7", None]
    with Store(tmp_path / "r.sqlite") as store:
        back = stored_eval_result(store, store.save_evaluation(_free_form_result(golds, preds)))
    assert [p.gold for p in back.predictions] == golds and [p.pred for p in back.predictions] == preds
    assert [p.correct for p in back.predictions] == [True, False, False, False]


def test_an_older_database_is_rebuilt_with_untyped_answers(tmp_path):
    """A database made when the answer columns were INTEGER keeps its rows through the rebuild,
    and answers written after it keep their text."""
    import sqlite3

    from tinystudent import store as store_module

    path = tmp_path / "old.sqlite"
    typed = store_module.SCHEMA.replace("gold NOT NULL,", "gold INTEGER NOT NULL,")
    typed = typed.replace("pred,\n", "pred INTEGER,\n").replace("pred_norm,\n", "pred_norm INTEGER,\n")
    assert typed != store_module.SCHEMA
    old = sqlite3.connect(path)
    old.execute(f"PRAGMA application_id={store_module.APPLICATION_ID}")
    old.executescript(typed)
    old.execute(
        "INSERT INTO evaluations (created, model, task, split, mode, n, acc, data_hash, cost, settings, versions)"
        " VALUES (0, 'm', 'arc_easy', 'test', 'loglikelihood', 1, 1.0, 'h', '{}', '{}', '{}')"
    )
    old.execute("INSERT INTO predictions VALUES (1, 'a', 2, 2, 2, 1, NULL, NULL)")
    old.commit()
    old.close()
    with Store(path) as store:
        assert [(p["example_id"], p["gold"], p["pred"]) for p in store.predictions(1)] == [("a", 2, 2)]
        eid = store.save_evaluation(_free_form_result(["18"], ["18"]))
        assert store.predictions(eid)[0]["gold"] == "18"
        declared = {row[1]: row[2] for row in store.db.execute("PRAGMA table_info(predictions)")}
    assert (declared["gold"], declared["pred"], declared["pred_norm"]) == ("", "", "")
