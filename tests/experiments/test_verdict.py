"""The verdict and the experiment config: smallest winner, closest loser, validation errors."""

from __future__ import annotations

import re
import textwrap

import pytest

from tinystudent.evaluation.stats import pearson
from tinystudent.experiments.config import ExperimentError, load_experiment
from tinystudent.experiments.verdict import compare, compare_to_fixed, smallest_winner, verdict
from tinystudent.results import TeacherResult

N = 200
TEACHER = {"name": "big", "acc": 0.5, "measured": True, "correct": [i % 2 == 0 for i in range(N)]}


def student(label, params, memory, extra_right):
    """Right wherever the teacher is right, plus `extra_right` of the questions it gets wrong."""
    correct = [i % 2 == 0 or (i // 2) < extra_right for i in range(N)]
    return {"label": label, "params": params, "peak_memory_mb": memory, "acc": sum(correct) / N, "correct": correct}


def test_smallest_winner_skips_ties_and_prefers_small():
    candidates = [
        student("tiny-same", 10, 300, 0),
        student("small-better", 20, 200, 30),
        student("large-much-better", 40, 100, 80),
    ]
    by_params = smallest_winner(TEACHER, candidates, "params")
    assert by_params["smallest_winner"] == "small-better"
    assert by_params["diff"] == pytest.approx(0.15) and by_params["p_value"] < 0.05
    assert by_params["diff_ci95"][0] > 0
    by_memory = smallest_winner(TEACHER, candidates, "peak_memory_mb")
    assert by_memory["smallest_winner"] == "large-much-better"


def test_the_boundary_is_the_largest_loser_below_the_smallest_winner():
    """Two runs of a 15-parameter student lose (the better one is named), one of 20 wins; a
    larger loser above the winner is not the boundary."""
    candidates = [
        student("tiny", 10, 1, 0),
        student("mid-a", 15, 2, 0),
        student("mid-b", 15, 2, 1),
        student("winner", 20, 3, 30),
        student("huge-loser", 50, 4, 0),
    ]
    entry = smallest_winner(TEACHER, candidates, "params")
    assert entry["smallest_winner"] == "winner"
    assert entry["largest_loser"]["label"] == "mid-b" and entry["largest_loser"]["params"] == 15
    assert entry["largest_loser"]["p_value"] >= 0.05
    alone = smallest_winner(TEACHER, [student("winner", 20, 3, 30)], "params")
    assert alone["largest_loser"] is None  # nothing smaller was tried
    none_win = smallest_winner(TEACHER, candidates[:3] + candidates[4:], "params")
    assert none_win["smallest_winner"] is None and none_win["largest_loser"]["label"] == "huge-loser"
    debate = {**student("debate", 90, 9, 0), "ids": [str(i) for i in range(0, N, 7)]}
    debate["correct"] = [False] * len(debate["ids"])
    teacher = {**TEACHER, "ids": [str(i) for i in range(N)]}
    with_debate = smallest_winner(teacher, [*candidates[:3], candidates[4], debate], "params")
    assert with_debate["smallest_winner"] is None
    assert with_debate["largest_loser"]["label"] == "huge-loser"  # judged on every question, unlike the debate


def test_no_winner_names_the_closest():
    candidates = [student("same", 10, 1, 0), student("slightly", 20, 2, 2)]
    entry = smallest_winner(TEACHER, candidates, "params")
    assert entry["smallest_winner"] is None
    assert entry["closest"]["label"] == "slightly" and entry["closest"]["p_value"] >= 0.05


def test_reported_teacher_is_compared_with_its_number():
    reported = {"name": "llama", "acc": 0.6, "measured": False, "correct": None}
    result = compare_to_fixed([True] * 70 + [False] * 30, 0.6)
    assert result["diff"] == pytest.approx(0.1) and result["p_value"] < 0.05
    entries = verdict([TEACHER, reported], [student("s", 1, 1, 40)])
    assert len(entries) == 4
    assert [e["best_teacher"] for e in entries] == [False, False, True, True]
    assert entries[2]["smallest_winner"] == "s" and entries[2]["teacher_measured"] is False


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


VALID = """
name: demo
task: {name: arc_easy, train_limit: 10, test_limit: 10}
teachers:
  - {name: smol, model: HuggingFaceTB/SmolLM2-135M-Instruct}
students:
  - {name: s4, model: HuggingFaceTB/SmolLM2-135M-Instruct, keep_layers: "first:4"}
methods: {finetune: [full, lora], objectives: [answer, "rationale:smol", "choice_kd:smol"]}
"""


def test_valid_experiment_loads(tmp_path):
    experiment = load_experiment(write(tmp_path, VALID), ["training.steps=5"])
    assert experiment.methods.finetune == ["full", "lora"] and experiment.training.steps == 5
    assert experiment.training.as_written() == {"steps": 5} == experiment.model_dump()["training"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.stepz=3", "training.stepz: unknown key (not allowed here)"),
        ("training.batch_size=0", "training.batch_size: Input should be greater than or equal to 1"),
        ("students.0.training.lora={rankk: 2}", "students.0.training.lora.rankk: unknown key"),
    ],
)
def test_a_bad_training_key_is_an_error_when_the_experiment_is_loaded(tmp_path, override, message):
    from tinystudent.experiments.config import Experiment

    with pytest.raises(ExperimentError, match=re.escape(message)):
        load_experiment(write(tmp_path, VALID), [override])
    with pytest.raises(ValueError, match="stepz"):  # the model alone, without load_experiment's checks
        Experiment.model_validate({**load_experiment(write(tmp_path, VALID)).model_dump(), "training": {"stepz": 3}})


@pytest.mark.parametrize(
    "change,message",
    [
        (("name: demo", "name: demo\ncolour: blue"), "colour: unknown key"),
        (("train_limit: 10", "train_limt: 10"), "task.train_limt: unknown key"),
        (('"rationale:smol"', '"rationale:big"'), "names no teacher"),
        (('"choice_kd:smol"', '"choice_kd"'), "needs a teacher"),
        (("{name: smol, model", "{name: smol, backend: http, model"), "needs `base_url`"),
        (("keep_layers", "students_extra: 1, keep_layers"), "students.0.students_extra"),
        (("{name: s4,", "{name: ../../victim,"), "students.0.name"),
        (("{name: s4,", "{name: /tmp/x,"), "names become folder names"),
        (("{name: smol,", "{name: 'a/b',"), "teachers.0.name"),
        (("name: demo", "name: ../x"), "name '../x' is not allowed"),
        (('keep_layers: "first:4"', 'keep_layers: "every:0"'), "students.0.keep_layers"),
        (
            (
                "model: HuggingFaceTB/SmolLM2-135M-Instruct}",
                "model: HuggingFaceTB/SmolLM2-135M-Instruct, strategy: magic}",
            ),
            "unknown strategy 'magic'",
        ),
        (("test_limit: 10}", "test_limit: 10, test_split: tst}"), "test_split 'tst'"),
        (("name: arc_easy", "name: arc_hard"), "'arc_hard' is neither a known task"),
        (("methods:", "seeds: []\nmethods:"), "seeds: List should have at least 1 item"),
        (("{name: smol, model", "{name: smol, backend: imported, model"), "needs `rationales` (its outputs) or"),
        (
            (
                "{name: smol, model: HuggingFaceTB/SmolLM2-135M-Instruct}",
                "{name: smol, backend: imported, reported_acc: 0.6, reported_source: paper}",
            ),
            "teacher 'smol' has no rationales",
        ),
    ],
)
def test_bad_experiment_names_the_key(tmp_path, change, message):
    with pytest.raises(ExperimentError) as err:
        load_experiment(write(tmp_path, VALID.replace(*change)))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("teachers.3.k_shots=1", "teachers.3: the list has 1 item(s); use an index from 0 to 0"),
        ("name.x=1", "name is a single value, it has no keys"),
        ("training.steps=[1,", "the value is not valid YAML"),
        ("training", "expected key.path=value"),
    ],
)
def test_bad_overrides_are_clear_errors(tmp_path, override, message):
    with pytest.raises(ExperimentError, match=re.escape(message)):
        load_experiment(write(tmp_path, VALID), [override])
    assert load_experiment(write(tmp_path, VALID), ["teachers.0.k_shots=3"]).teachers[0].k_shots == 3


def test_a_teacher_known_by_its_published_accuracy_alone(tmp_path):
    text = VALID.replace('"rationale:smol", ', "").replace(
        "teachers:\n", "teachers:\n  - {name: paper, backend: imported, reported_acc: 0.7, reported_source: Table 2}\n"
    )
    experiment = load_experiment(write(tmp_path, text))
    assert [t.writes_rationales for t in experiment.teachers] == [False, True]


def test_missing_files_are_named(tmp_path):
    text = VALID.replace(
        "teachers:\n", "teachers:\n  - {name: old, backend: imported, rationales: {format: tinyllm, path: ./nowhere}}\n"
    )
    with pytest.raises(ExperimentError, match="teachers.0.rationales.path"):
        load_experiment(write(tmp_path, text))
    with pytest.raises(ExperimentError, match="no such experiment file"):
        load_experiment(tmp_path / "missing.yaml")


def test_candidates_on_a_subset_are_paired_by_question_id():
    teacher = {**TEACHER, "ids": [str(i) for i in range(N)]}
    subset = {
        "label": "debate",
        "params": 1,
        "peak_memory_mb": 1,
        "acc": 1.0,
        "ids": [str(i) for i in range(1, 100, 2)],
        "correct": [True] * 50,
    }  # the teacher's misses
    entry = smallest_winner(teacher, [subset], "params")
    assert entry["smallest_winner"] == "debate" and entry["diff"] == pytest.approx(1.0)
    assert entry["subset"] == {"n": 50, "of": N, "teacher_acc": 0.0}


def test_the_closest_is_judged_on_every_question_before_a_subset():
    """A group run on 20 questions that ties the teacher there is not 'closer' than a student
    judged on all of them; a sentence about a subset says how many questions and the teacher's
    accuracy on them."""
    from tinystudent.report.verdict import verdict_sentence

    teacher = {**TEACHER, "ids": [str(i) for i in range(N)]}
    ids = [str(i) for i in range(20)]
    tie_on_subset = {
        "label": "debate",
        "params": 1,
        "peak_memory_mb": 1,
        "acc": 0.5,
        "ids": ids,
        "correct": [i % 2 == 0 for i in range(20)],
    }
    worse_everywhere = {**student("student", 2, 2, 0), "ids": teacher["ids"]}
    worse_everywhere["correct"] = [c and i % 4 == 0 for i, c in enumerate(worse_everywhere["correct"])]
    worse_everywhere["acc"] = sum(worse_everywhere["correct"]) / N
    entry = smallest_winner(teacher, [tie_on_subset, worse_everywhere], "params")
    assert entry["closest"]["label"] == "student" and entry["closest"]["subset"] is None
    alone = smallest_winner(teacher, [tie_on_subset], "params")
    assert alone["closest"]["subset"] == {"n": 20, "of": N, "teacher_acc": 0.5}
    sentence = verdict_sentence(alone, TeacherResult(name="big", acc=0.5, measured=True))
    assert "on the 20 of 200 test questions it answered, where the teacher has 50.0%" in sentence


def test_the_sentence_gives_the_winner_its_own_numbers_and_the_boundary_its_own():
    """The quickstart's report once said the winner had the largest loser's accuracy and p."""
    from tinystudent.report.verdict import verdict_sentence

    entry = {
        "teacher": "smollm2",
        "teacher_acc": 0.658,
        "by": "params",
        "smallest_winner": "minilm-4L",
        "winner_acc": 0.715,
        "diff": 0.057,
        "diff_ci95": [0.0, 0.122],
        "p_value": 0.043,
        "params": 19_200_000,
        "largest_loser": {"label": "minilm-1L", "params": 13_800_000, "acc": 0.667, "diff": 0.008},
    }
    sentence = verdict_sentence(entry, TeacherResult(name="smollm2", acc=0.658, params=134_500_000))
    winner, boundary = sentence.split("Below it")
    assert "minilm-4L (acc 71.5%, +5.7 points" in winner and "p = 0.043" in winner and "66.7%" not in winner
    assert "minilm-1L" in boundary and "acc 66.7%, +0.8 points" in boundary


# --- the majority baseline and seeds ---------------------------------------------------------

MAJORITY = {"name": "always 'yes'", "acc": 0.6, "correct": [i % 5 < 3 for i in range(N)]}  # 60% of the questions


def test_a_win_over_a_weak_teacher_that_does_not_beat_the_majority_is_no_win():
    weak = {"name": "weak", "acc": 0.5, "measured": True, "correct": [i % 2 == 0 for i in range(N)]}
    prior = {**student("says-yes", 10, 1, 0), "correct": MAJORITY["correct"], "acc": 0.6}
    assert compare(prior, weak)["p_value"] < 0.05  # it beats the teacher ...
    entry = smallest_winner(weak, [prior], "params", majority=MAJORITY)
    assert entry["smallest_winner"] is None  # ... but not the majority baseline, so it is no winner
    assert entry["closest"]["label"] == "says-yes" and entry["closest"]["vs_majority"]["p_value"] >= 0.05
    assert entry["teacher_below_majority"] is True and entry["majority_baseline"] == 0.6
    learnt = {**student("learnt", 20, 2, 0), "correct": [c or i % 7 == 0 for i, c in enumerate(MAJORITY["correct"])]}
    learnt["acc"] = sum(learnt["correct"]) / N  # right wherever "yes" is, and on some "no" questions too
    winner = smallest_winner(weak, [prior, learnt], "params", majority=MAJORITY)
    assert winner["smallest_winner"] == "learnt" and winner["vs_majority"]["p_value"] < 0.05
    assert winner["largest_loser"]["label"] == "says-yes"
    strong = smallest_winner(TEACHER | {"acc": 0.7}, [learnt], "params", majority=MAJORITY)
    assert strong["teacher_below_majority"] is False


def test_seeds_are_judged_by_their_mean_with_seed_variance_in_the_interval():
    from tinystudent.experiments.verdict import recipe_interval

    rng = __import__("random").Random(0)
    stable = [[rng.random() < 0.75 for _ in range(N)]] * 3  # three seeds giving the same answers
    spread = [[rng.random() < p for _ in range(N)] for p in (0.6, 0.75, 0.9)]
    accs = [sum(row) / N for row in spread]
    one = {"label": "one", "acc": sum(stable[0]) / N, "correct": stable[0], "params": 1}
    same = {**one, "seeds_correct": stable}
    varied = {"label": "varied", "acc": sum(accs) / 3, "correct": spread[0], "seeds_correct": spread, "params": 1}
    alike, alone = compare(same, MAJORITY), compare(one, MAJORITY)  # identical seeds: the one-seed bootstrap
    assert alike["p_value"] == alone["p_value"] and alike["ci95"] == pytest.approx(alone["ci95"])
    assert compare(varied, MAJORITY)["diff"] == pytest.approx(sum(accs) / 3 - 0.6)
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    spread_only_questions = {**varied, "seeds_correct": [spread[1]] * 3}
    assert width(recipe_interval(varied)) > width(recipe_interval(spread_only_questions))
    low, high = recipe_interval(varied)
    assert low < sum(accs) / 3 < high
    fixed = compare(varied, {"name": "paper", "acc": 0.6, "correct": None})
    assert fixed["diff"] == pytest.approx(sum(accs) / 3 - 0.6)
