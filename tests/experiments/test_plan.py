"""The plan of a study, tested without running anything: which units, in which order, on what they
depend, and keys that equal those the runner stores (and stored before the plan existed)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from tinystudent.commands.run import EXAMPLES
from tinystudent.experiments.config import Experiment, load_experiment
from tinystudent.experiments.data import Splits, StudyData
from tinystudent.experiments.plan import make_plan, plan
from tinystudent.experiments.plan_model import Answers, Known
from tinystudent.experiments.stages.teachers import measurement
from tinystudent.hashing import stable_hash
from tinystudent.tasks.schema import Example

# --- a study run on paper: fake results for each kind of unit ---------------------------------


def fraction(*parts) -> float:
    """A number in [0, 1) fixed by `parts`: fake results differ by unit but never between runs."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 2**32


def questions(prefix: str, n: int) -> list[Example]:
    return [
        Example(f"{prefix}{i}", f"Is {i} even?", ("yes", "no"), i % 2, context=f"{i} is a number.") for i in range(n)
    ]


def toy_data(name: str = "toy.jsonl") -> StudyData:
    return StudyData(Splits(name, questions("tr", 12), questions("va", 6), questions("te", 10), {"file": name}))


def kind_of(model: str) -> str:
    model = model.lower()
    return "encoder" if "minilm" in model or "enc" in model else "seq2seq" if "t5" in model else "causal"


def evaluation(key: str) -> dict:
    acc = round(fraction(key, "acc"), 4)
    return {"acc": acc, "acc_norm": round(fraction(key, "norm"), 4), "ci95": [acc, acc], "n": 10, "params": 1000,
            "peak_memory_mb": 10.0, "latency_ms_p50": 1.0, "evaluation_id": int(fraction(key, "id") * 1e9)}  # fmt: skip


def fake_result(unit) -> dict:
    """What a unit of each kind returns, made up from its key."""
    payload, key = unit.payload, unit.key
    if unit.kind == "student":
        student = payload["student"]
        kind = kind_of(student["model"])
        size = 1000 * (1 + len(student["name"])) - (500 if student.get("keep_layers") else 0)
        bpb = round(1 + fraction(key), 3) if kind == "causal" else None
        return {"path": f"/students/{student['name']}", "kind": kind, "params": size, "bits_per_byte": bpb}
    if unit.kind == "train":
        return {"train": {"valid_acc": round(fraction(key, "valid"), 3), "checkpoint": f"/ckpt/{key}"},
                **evaluation(key), "student": payload["student"]["name"], "group": "taught",
                **{name: payload[name] for name in ("method", "objective", "seed")}}  # fmt: skip
    if unit.kind == "mutual":
        return {"peers": [{**evaluation(key + name), "peer": name} for name in payload["mutual"]]}
    if unit.kind == "teacher_eval":
        return {"name": payload["teacher"]["name"], **evaluation(key)}
    made = {"cut": {"path": f"/cut/{key}"}, "recover": {"path": f"/recovered/{key}"}, "teach": {}, "import": {}}
    return made.get(unit.kind) or evaluation(key)


def answers(evaluation_id: int) -> Answers:
    right = [fraction(evaluation_id, i) < 0.6 for i in range(10)]
    return Answers([f"te{i}" for i in range(10)], right, right)


def simulate(experiment: Experiment, data: StudyData) -> tuple[list, Known]:
    """Run the plan on paper as the runner runs it: the first unit not run yet, then plan again."""
    known = Known()
    while True:
        units = plan(experiment, data, known)
        pending = next((u for u in units if u.key not in known.results), None)
        if pending is None:
            return units, known
        result = {**fake_result(pending), "label": pending.name, "run_key": pending.key}
        known.results[pending.key] = result
        if pending.kind in ("teach", "import"):
            known.rationales[pending.key] = {"tr0": f"{pending.args['rationales_of']}: because"}
        for peer in [result, *result.get("peers", [])]:
            if "evaluation_id" in peer:
                known.answers[peer["evaluation_id"]] = answers(peer["evaluation_id"])


# --- a hand-written study covering every kind of unit ----------------------------------------

STUDY = {
    "name": "paper",
    "task": {"name": "toy.jsonl", "train_limit": 12, "valid_limit": 6, "test_limit": 10, "max_input_tokens": 64},
    "teachers": [
        {"name": "paper", "backend": "imported", "reported_acc": 0.7, "reported_source": "Table 2",
         "rationales": {"format": "jsonl", "path": "r.jsonl", "teacher": "big"}},
        {"name": "quoted", "backend": "imported", "reported_acc": 0.65, "reported_source": "Table 3"},
        {"name": "local", "model": "tiny-causal", "eval_modes": ["zero_shot", "generate"], "max_new_tokens": 12},
        {"name": "server", "backend": "http", "model": "big-model", "base_url": "http://localhost:1/v1",
         "strategy": "zero_shot"},
    ],
    "students": [
        {"name": "cut", "model": "tiny-causal", "keep_layers": "first:1", "recover": {"steps": 2},
         "training": {"epochs": 2}},
        {"name": "whole", "model": "tiny-causal"},
        {"name": "enc", "model": "tiny-enc",
         "methods": {"finetune": ["full"], "objectives": ["answer", "choice_kd:local"]}},
    ],
    "methods": {"finetune": ["full", "lora"],
                "objectives": ["answer", "rationale:all", "rationale:local", "choice_kd:local"]},
    "seeds": [0, 1],
    "training": {"steps": 2, "batch_size": 4, "lora": {"rank": 4}},
    "collaboration": {"members": ["cut", "whole", "enc"], "debate_members": ["cut", "whole"], "ensemble": True,
                      "mutual_learning": True, "debate_rounds": 2, "debate_limit": 4, "training": {"steps": 1}},
}  # fmt: skip


def study(**changes) -> Experiment:
    return Experiment.model_validate({**STUDY, **changes})


def kinds(units) -> dict[str, int]:
    return dict(Counter(unit.kind for unit in units))


def test_the_whole_run_on_paper():
    units, _ = simulate(study(), toy_data())
    assert kinds(units) == {
        "teacher_eval": 4,  # local: zero_shot and generate on validation, then the best on test; the server
        "cut": 1,
        "import": 1,  # paper's rationales
        "teach": 1,  # local's (the server scores zero-shot: it writes none)
        "choice_scores": 1,  # local's choices, scored once for every choice_kd run
        "recover": 1,
        "student": 3,
        "student_eval": 2,  # untrained, but not the encoder
        "train": 2 * 4 * 2 + 2 * 4 * 2 + 2 * 2,  # cut and whole: 2 methods x 4 objectives x 2 seeds; enc: 2 x 2
        "debate": 1,
        "ensemble": 2,
        "mutual": 1,
    }
    labels = [unit.name for unit in units]
    assert labels[:4] == [
        "teacher local (zero_shot, validation)",
        "teacher local (generate, validation)",
        labels[2],  # the test pass in whichever way won on validation
        "teacher server",
    ]
    assert labels[2] in ("teacher local (zero_shot, test)", "teacher local (generate, test)")
    assert labels[4:10] == [
        "cut of cut",
        "rationales of paper",
        "rationales of local",
        "recovery of cut",
        "student cut",
        "cut / untrained",
    ]
    assert labels[-4:] == [
        "debate of cut + whole (4 test questions)",
        "ensemble average of cut + whole + enc",
        "ensemble vote of cut + whole + enc",
        "mutual learning of cut + whole + enc",
    ]


def test_a_student_that_writes_no_text_is_trained_reading_the_rationales():
    """An encoder's rationale objective is planned like a causal student's: it reads them."""
    students = [{**STUDY["students"][2], "methods": {"finetune": ["full"], "objectives": ["rationale:local"]}}]
    units, _ = simulate(study(students=students, collaboration=None), toy_data())
    runs = [unit for unit in units if unit.kind == "train"]
    assert [unit.name for unit in runs] == [
        "enc / full / rationale:local / seed 0",
        "enc / full / rationale:local / seed 1",
    ]
    names = {unit.key: unit.name for unit in units}
    assert {names[key] for key in runs[0].needs} == {"student enc", "rationales of local"}


def test_before_anything_runs_the_plan_names_what_it_can():
    units = plan(study(), toy_data())
    assert kinds(units) == {
        "teacher_eval": 3,  # the test pass waits for validation
        "cut": 1,
        "import": 1,
        "teach": 1,
        "choice_scores": 1,  # the teacher's choices scored once, for every choice_kd run
        "student": 2,  # the cut student waits for its recovery, keyed by the rationales
        "train": 2 * 4 * 2 + 2 * 2,  # whole: every objective (cut waits for its recovery); enc: answer and choice_kd
    }


def test_every_unit_needs_only_units_planned_before_it():
    units, _ = simulate(study(), toy_data())
    position = {unit.key: i for i, unit in enumerate(units)}
    assert len(position) == len(units)  # each unit once
    for i, unit in enumerate(units):
        assert all(position[key] < i for key in unit.needs), unit.name
    by_name = {unit.name: unit for unit in units}
    need = lambda name: {units[position[k]].name for k in by_name[name].needs}  # noqa: E731
    assert need("recovery of cut") == {"cut of cut", "rationales of paper", "rationales of local"}
    assert need("student cut") == {"cut of cut", "recovery of cut"}
    assert need("cut / full / rationale:all / seed 0") == {"student cut", "rationales of paper", "rationales of local"}
    assert need("whole / lora / rationale:local / seed 1") == {"student whole", "rationales of local"}
    assert need("whole / full / choice_kd:local / seed 0") == {"student whole", "choice scores of local"}
    assert need("mutual learning of cut + whole + enc") == {"student cut", "student whole", "student enc"}
    members = need("ensemble vote of cut + whole + enc")  # each member's best run
    assert sorted(name.split(" / ")[0] for name in members) == ["cut", "enc", "whole"]
    test_pass = next(u for u in units if u.name.startswith("teacher local") and u.name.endswith("test)"))
    assert need(test_pass.name) == {"teacher local (zero_shot, validation)", "teacher local (generate, validation)"}


def test_ensembles_and_debate_use_each_members_best_run():
    units, known = simulate(study(), toy_data())
    train = [u for u in units if u.kind == "train"]
    for unit in (u for u in units if u.kind == "ensemble"):
        for name, key in zip(unit.args["names"], unit.payload["members"]):
            runs = [known.results[u.key] for u in train if u.args["student"] == name]
            best = max(runs, key=lambda r: r["train"]["valid_acc"])
            assert known.results[key]["train"]["valid_acc"] == best["train"]["valid_acc"]


def test_plan_is_pure_and_stable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = toy_data()
    first, second = simulate(study(), data)[0], simulate(study(), data)[0]
    assert [u.key for u in first] == [u.key for u in second]
    assert list(tmp_path.iterdir()) == []  # nothing written


# Keys the runner stored for these studies before the plan existed (the runner of commit 0998ad6,
# driven with the same fake results): databases it wrote resume with them.
EARLIER_KEYS = {
    "teacher local (zero_shot, validation)": "teacher_eval:c78a38f4e549dee2",
    "teacher server": "teacher_eval:0fb444e11a77334d",
    "cut of cut": "cut:03d033f882424ea8",
    "rationales of paper": "import:5c678d2f0583067d",
    "recovery of cut": "recover:4dc47c273459306f",
    "student whole": "student:5483bc9d5133b2a4",
    "whole / lora / rationale:all / seed 1": "train:dc0a6f5c11b06b91",
    "ensemble vote of cut + whole + enc": "ensemble:2f5d6638c02aac58",
    "mutual learning of cut + whole + enc": "mutual:c892f89dc5a539a3",
}
EARLIER_DIGESTS = {"study": "33bcc30ce57e5609", "search": "b79d91e1b3b1a68c"}  # of every key, in order


def test_keys_are_those_the_runner_stored_before_the_plan():
    units, _ = simulate(study(), toy_data())
    keys = {unit.name: unit.key for unit in units}
    assert {name: keys[name] for name in EARLIER_KEYS} == EARLIER_KEYS
    # every unit planned before keeps its key; a teacher's choice scores became a unit of their own
    earlier = [unit.key for unit in units if unit.kind != "choice_scores"]
    assert stable_hash(earlier) == EARLIER_DIGESTS["study"]
    searched, _ = simulate(study(collaboration=None, search=SEARCH), toy_data())
    assert stable_hash([unit.key for unit in searched if unit.kind != "choice_scores"]) == EARLIER_DIGESTS["search"]


def test_keys_change_with_their_inputs_only():
    def keys(experiment):
        return {unit.name: unit.key for unit in simulate(experiment, toy_data())[0]}

    before = keys(study())
    more_steps = keys(study(training={**STUDY["training"], "steps": 3}))
    changed = {name for name in before if before[name] != more_steps.get(name)}
    assert changed == {name for name in before if " / seed " in name and "untrained" not in name} | {
        name for name in before if name.startswith("mutual")
    } | {name for name in before if name.startswith(("ensemble", "debate"))}  # they name the runs they combine
    teachers = [dict(t) for t in STUDY["teachers"]]
    teachers[2]["max_new_tokens"] = 20
    longer = keys(study(teachers=teachers))
    changed = {name for name in before if before[name] != longer.get(name)}
    assert "rationales of local" in changed and "teacher local (zero_shot, validation)" not in changed
    assert "whole / full / rationale:local / seed 0" in changed and "whole / full / answer / seed 0" not in changed
    fewer = StudyData(Splits("toy.jsonl", questions("tr", 12), questions("va", 6), questions("te", 9), {}))
    other_data = {unit.name: unit.key for unit in plan(study(), fewer)}
    assert other_data["cut of cut"] == before["cut of cut"]  # a cut depends on the model alone
    assert other_data["teacher server"] != before["teacher server"]


SEARCH = {"objective": "answer", "method": "full", "alpha": 0.0001}


def test_search_trains_one_candidate_at_a_time():
    experiment = study(collaboration=None, search=SEARCH)
    units, known = simulate(experiment, toy_data())
    trained = [u for u in units if u.kind == "train"]
    written = make_plan(experiment, toy_data(), known)
    report, teacher = written.search
    assert [u.args["student"] for u in trained] == [s.candidate.name for s in report.steps if s.action == "trained"]
    assert report.winner is None and report.trained + report.skipped == 2  # enc has no bits per byte
    accs = {t.name: measurement(written, t)["acc"] for t in experiment.teachers}
    assert teacher == max(accs, key=accs.get)
    assert not [u for u in units if u.kind in ("debate", "ensemble", "mutual")]


def test_a_search_without_any_teacher_accuracy_fails_before_anything_runs():
    teachers = [{"name": "paper", "backend": "imported", "rationales": {"format": "jsonl", "path": "r.jsonl"}}]
    experiment = study(
        teachers=teachers,
        students=[{"name": "whole", "model": "tiny-causal"}],
        collaboration=None,
        methods={"finetune": ["full"], "objectives": ["answer"]},
        search={"objective": "answer"},
    )
    with pytest.raises(ValueError, match="search: no teacher accuracy to beat"):
        plan(experiment, toy_data())


SHIPPED = {
    "quickstart": {"teacher_eval": 2, "import": 2, "cut": 2, "student": 2, "train": 2, "ensemble": 2},
    "bioasq": {
        "teacher_eval": 3 + 1,  # zero_shot, fewshot:1, generate on validation; the best on test
        "cut": 6,  # the SmolLM2 and MiniLM cuts, and MiniLM saved whole as a classifier
        "import": 2,
        "teach": 1,
        "choice_scores": 1,  # SmolLM2's, for the 2-layer MiniLM's choice_kd run
        "recover": 2,
        "student": 7,
        "student_eval": 3,  # the three SmolLM2 students; MiniLM's head is random untrained
        "train": 2 + 1 + 5 + 3 + 2 * 3 + 2 + 3,  # the MiniLMs but the 2-layer one with three seeds
        "debate": 1,
        "ensemble": 2,
        "mutual": 1,
    },
    "modern_ladder": {
        "teacher_eval": 1 + 2,  # the served 7B; the same model run locally (validation: acc or acc_norm; test)
        "teach": 1,
        "choice_scores": 1,
        "student": 5,
        "student_eval": 5,
        # SmolLM2: answer, rationale, choice_kd, uld_kd; Qwen2.5: those but uld_kd, logit_kd, onpolicy_kd
        "train": 3 * 2 * 4 * 2 + 2 * 2 * 5 * 2,
        "debate": 1,
        "ensemble": 2,
    },
    "math": {
        "teacher_eval": 3,  # two ways on validation, the better on test
        "student": 1,
        "student_eval": 1,
        "cut": 1,
        "teach": 1,
        "import": 1,
        "recover": 1,
        "train": 3,
    },
    "gsm8k_ladder": {
        "teacher_eval": 1,
        "student": 4,
        "student_eval": 4,
        "train": 4 * 2 * 4 * 3,
        "import": 1,
        "teach": 1,
        "self_consistency": 1,
    },
    **{
        name: {"import": 2, "student": 3, "student_eval": 3, "train": 3 * 2 * 4}
        for name in ("tinyllm_arc", "tinyllm_bioasq", "tinyllm_obqa")
    },
}


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_units_of_each_shipped_experiment(name, shared_dir, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)  # shipped examples name ../shared relative to the checkout
    experiment = load_experiment(EXAMPLES / f"{name}.yaml")
    units, _ = simulate(experiment, toy_data(experiment.task.name))
    assert kinds(units) == SHIPPED[name]


@pytest.mark.slow
def test_the_runner_stores_each_planned_unit_under_its_key(tmp_path, monkeypatch):
    """The runner executes the plan: with each unit's work faked, the store holds exactly the
    planned keys, and a second run reads every one back."""
    import sqlite3

    import tinystudent.teachers
    from tinystudent.experiments import runner, work
    from tinystudent.results import Study
    from tinystudent.store import Store

    monkeypatch.setattr(runner, "load_study_data", lambda experiment: toy_data())
    monkeypatch.setattr(work, "answers_of", lambda store, evaluation_id: answers(evaluation_id))
    monkeypatch.setattr(tinystudent.teachers, "load_rationales", lambda store, name, *rest: {"tr0": f"{name}: because"})
    for kind in work.WORK:
        monkeypatch.setitem(work.WORK, kind, lambda context, unit: fake_result(unit))
    planned, _ = simulate(study(), toy_data())
    with Store(tmp_path / "r.sqlite") as store:
        first = runner.run_experiment(study(), store, tmp_path / "out")
        again = runner.run_experiment(study(), store, tmp_path / "out")
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        stored = [key for (key,) in db.execute("SELECT run_key FROM runs WHERE kind != 'study' ORDER BY rowid")]
    assert stored == [unit.key for unit in planned]
    assert first["units"] == {"computed": len(planned), "skipped": 0}
    assert again["units"] == {"computed": 0, "skipped": len(planned)} and again["runs"] == first["runs"]
    assert Study.from_dict(first).to_dict() == first


def test_the_plan_preview_counts_what_is_left_and_its_critical_path(tmp_path, monkeypatch):
    """`run --plan`: before anything runs every named unit is left, costed by its kind's default,
    and the critical path is a chain through `needs`; after a run the database holds them all,
    read back so that the units named only later are listed as done too."""
    import tinystudent.teachers
    from tinystudent.experiments import runner, work
    from tinystudent.experiments.preview import DEFAULT_SECONDS, describe, preview_plan
    from tinystudent.store import Store

    before = preview_plan(study(), toy_data(), None)
    assert [u.key for u in before.units] == [u.key for u in plan(study(), toy_data())] and not before.done
    path = before.critical_path()
    assert path and all(later.needs and earlier.key in later.needs for earlier, later in zip(path, path[1:]))
    assert all(before.cost(u) == DEFAULT_SECONDS[u.kind] for u in before.units)
    assert sum(before.cost(u) for u in path) >= max(before.cost(u) for u in before.left)
    lines = describe(before, study())
    assert lines[0] == "executor: local" and lines[1].startswith("unit kind")
    assert any(line.startswith("train") and line.endswith("1 CPU, 0 GPU") for line in lines)

    monkeypatch.setattr(runner, "load_study_data", lambda experiment: toy_data())
    monkeypatch.setattr(work, "answers_of", lambda store, evaluation_id: answers(evaluation_id))
    monkeypatch.setattr(tinystudent.teachers, "load_rationales", lambda store, name, *rest: {"tr0": f"{name}: because"})
    for kind in work.WORK:
        monkeypatch.setitem(work.WORK, kind, lambda context, unit: fake_result(unit))
    planned, _ = simulate(study(), toy_data())
    with Store(tmp_path / "r.sqlite") as store:
        runner.run_experiment(study(), store, tmp_path / "out")
        after = preview_plan(study(), toy_data(), store)
    assert [u.key for u in after.units] == [u.key for u in planned]
    assert after.done == {u.key for u in planned} and after.left == [] and after.critical_path() == []
    assert after.measured == {u.kind for u in planned}  # every kind's cost now comes from its units
