"""Teachers: their test accuracy (the baseline to beat), their rationales and choice probabilities.

A local teacher is run on the validation split in each of its `eval_modes`; the test split is
then scored in the way (pass and metric) that did best there. A server is scored on the test
split's choices; an imported teacher is known by its reported accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.experiments.config import Experiment, ScoringPass, TeacherSpec, parse_scoring_pass
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.stages.common import StageContext, release
from tinystudent.experiments.units import UnitSpec
from tinystudent.tasks.schema import is_free_form

if TYPE_CHECKING:
    from tinystudent.experiments.plan_model import Plan
    from tinystudent.store import Store

# --- planning -------------------------------------------------------------------------------


def teacher_payload(plan: Plan, spec: TeacherSpec, scoring: bool = False) -> dict:
    """What a teacher's units depend on: which ways it is scored is left out, so adding one
    reuses what the others computed; its scores (`scoring`) depend only on the model and its
    input budget, not on how it teaches. The engine counts only when it is not the default (keys
    stored before it existed stay the same) and never for scores (always transformers')."""
    exclude = {"eval_modes", "batch_size"} | ({"evidence"} if spec.evidence is None else set())
    if scoring:
        exclude |= {"strategy", "k_shots", "max_new_tokens", "teach_limit", "choice_limit", "rationales"}
    if scoring or spec.engine == "transformers":
        exclude.add("engine")
    return {**plan.base, "teacher": spec.model_dump(exclude=exclude)}


def plan_teachers(plan: Plan) -> None:
    """The units that measure each teacher: a server's evaluation, or a local teacher's passes."""
    for spec in plan.experiment.teachers:
        if spec.backend == "http":
            plan.add(server_unit(plan, spec))
        elif spec.measured:
            for unit in validation_units(plan, spec):
                plan.add(unit)
            test = test_unit(plan, spec)
            if test is not None:
                plan.add(test)


def server_unit(plan: Plan, spec: TeacherSpec) -> UnitSpec:
    return UnitSpec("teacher_eval", f"teacher {spec.name}", teacher_payload(plan, spec), args={"teacher": spec.name})


def pass_unit(plan: Plan, spec: TeacherSpec, scoring: ScoringPass, split: str, needs=()) -> UnitSpec:
    """One evaluation of a local teacher on `split` in one way of scoring it."""
    payload = {**teacher_payload(plan, spec, scoring=True), "split": split, "scoring": scoring.name}
    args = {"teacher": spec.name, "split": split, "scoring": scoring.name}
    return UnitSpec("teacher_eval", f"teacher {spec.name} ({scoring.name}, {split})", payload, needs, args)


def scoring_choices(spec: TeacherSpec) -> list[tuple[ScoringPass, str]]:
    """Every (pass, metric) the teacher may be judged by."""
    passes = [parse_scoring_pass(mode) for mode in spec.eval_modes]
    return [(scoring, metric) for scoring in passes for metric in scoring.metrics]


def validation_units(plan: Plan, spec: TeacherSpec) -> list[UnitSpec]:
    """A pass on validation for each way of scoring, when there is a choice to make."""
    if len(scoring_choices(spec)) < 2:
        return []
    return [pass_unit(plan, spec, parse_scoring_pass(mode), "validation") for mode in spec.eval_modes]


def validation_rows(plan: Plan, spec: TeacherSpec) -> list[dict] | None:
    """Each way of scoring's accuracy on validation (None until every pass has run)."""
    rows = []
    for unit in validation_units(plan, spec):
        result = plan.result(unit)
        if result is None:
            return None
        scoring = parse_scoring_pass(unit.args["scoring"])
        rows += [
            {"scoring": scoring.label(m), "pass": scoring.name, "metric": m, "acc": result[m]} for m in scoring.metrics
        ]
    return rows


def chosen_scoring(plan: Plan, spec: TeacherSpec) -> tuple[ScoringPass, str] | None:
    """The way of scoring that did best on validation (the only one when there is no choice)."""
    choices = scoring_choices(spec)
    if len(choices) == 1:
        return choices[0]
    rows = validation_rows(plan, spec)
    if rows is None:
        return None
    best = max(rows, key=lambda r: r["acc"])  # max keeps the first of equals
    return next(c for c in choices if (c[0].name, c[1]) == (best["pass"], best["metric"]))


def test_unit(plan: Plan, spec: TeacherSpec) -> UnitSpec | None:
    """The test pass in the way chosen on validation (None until it is chosen)."""
    chosen = chosen_scoring(plan, spec)
    if chosen is None:
        return None
    needs = [unit.key for unit in validation_units(plan, spec)]
    return pass_unit(plan, spec, chosen[0], plan.experiment.task.test_split, needs)


def measurement(plan: Plan, spec: TeacherSpec) -> dict | None:
    """The teacher's test accuracy and how it was scored, or its reported number (None until it
    has been measured)."""
    if not spec.measured:
        return {
            "name": spec.name,
            "acc": spec.reported_acc,
            "measured": False,
            "source": spec.reported_source,
            "evaluation_id": None,
        }
    if spec.backend == "http":
        return plan.result(server_unit(plan, spec))
    chosen, test = chosen_scoring(plan, spec), plan.result(test_unit(plan, spec))
    if chosen is None or test is None:
        return None
    scoring, metric = chosen
    validation = validation_rows(plan, spec) if validation_units(plan, spec) else []
    return {**test, "acc": test[metric], "metric": metric, "scoring": scoring.label(metric), "validation": validation}


def peer_teacher(student: str, model: str) -> TeacherSpec:
    """A student teaching its peers (collaborative teaching). Built without validation: `peer:`
    is not a name a config may give, so it cannot clash with a teacher's."""
    return TeacherSpec.model_construct(name=f"peer:{student}", model=model, max_new_tokens=64)


def teacher_of(experiment: Experiment, args: dict) -> TeacherSpec:
    """The teacher a unit's `args` name: one of the experiment's, or a peer."""
    if "peer" in args:
        return peer_teacher(args["peer"], args["model"])
    return experiment.teacher(args["teacher"])


def rationale_unit(plan: Plan, spec: TeacherSpec, peer: str | None = None) -> UnitSpec:
    """The unit that generates (`teach`) or imports (`import`) a teacher's rationales."""
    payload = {**teacher_payload(plan, spec), "what": "rationales"}
    imported = spec.backend == "imported"
    written_as = (spec.rationales.teacher if spec.rationales else None) or spec.name
    source = (written_as, "imported") if imported else (spec.model, spec.strategy)
    named = {"peer": peer, "model": spec.model} if peer else {"teacher": spec.name}
    args = {**named, "rationales_of": source[0], "strategy": source[1]}
    return UnitSpec("import" if imported else "teach", f"rationales of {spec.name}", payload, args=args)


def choice_scores_unit(plan: Plan, spec: TeacherSpec) -> UnitSpec:
    """The unit that scores a teacher's choices on the training questions (`choice_limit` of
    them) for choice-level distillation: run once, read by every training run that learns from
    them."""
    payload = {**teacher_payload(plan, spec), "what": "choice_scores"}
    return UnitSpec("choice_scores", f"choice scores of {spec.name}", payload, args={"teacher": spec.name})


# --- work -----------------------------------------------------------------------------------


def teacher_budget(experiment: Experiment, spec: TeacherSpec) -> int | None:
    """Tokens a teacher's inputs are fitted to: its own budget, else the task's."""
    return spec.max_input_tokens or experiment.task.max_input_tokens


def teacher_evidence(experiment: Experiment, spec: TeacherSpec) -> str:
    """How a teacher's evidence is shortened to its budget: its own strategy, else the task's."""
    return spec.evidence or experiment.task.evidence


def teaching_examples(data: StudyData, limit: int | None):
    """The first `limit` training questions, those a teacher writes rationales (`teach_limit`)
    or choice probabilities (`choice_limit`) for; students train on all, the others without
    this teacher's signal."""
    return data.splits.train[:limit] if limit else data.splits.train


def make_teacher(context: StageContext, spec: TeacherSpec):
    from tinystudent.teachers import make_teacher as make

    if spec.backend == "local":
        return make(spec.model_id, batch_size=spec.batch_size, device=context.experiment.device, engine=spec.engine)
    return make(spec.model_id, spec.base_url, spec.api_key_env)


def measure(context: StageContext, unit: UnitSpec) -> dict:
    """A `teacher_eval` unit: one pass of a local teacher, or a server on the test split."""
    spec = context.experiment.teacher(unit.args["teacher"])
    if spec.backend == "http":
        return measure_server(context, spec)
    task, split = context.experiment.task, unit.args["split"]
    limit = task.valid_limit if split == "validation" else task.test_limit
    summary = context.evaluate(
        spec.model_id,
        unit,
        None,
        split if split != task.test_split else None,
        limit,
        parse_scoring_pass(unit.args["scoring"]),
        teacher_budget(context.experiment, spec),
        teacher_evidence(context.experiment, spec),
    )
    return {"name": spec.name, "measured": True, **summary}


def measure_server(context: StageContext, spec: TeacherSpec) -> dict:
    import numpy as np

    from tinystudent.evaluation.stats import bootstrap_ci
    from tinystudent.teachers import teacher_choice_logprobs

    test, task = context.data.splits.test, context.data.splits.task
    teacher = make_teacher(context, spec)
    budget, evidence = teacher_budget(context.experiment, spec), teacher_evidence(context.experiment, spec)
    if is_free_form(test):
        correct = _server_free_form(context, teacher, test, budget, evidence)
    else:
        scores = teacher_choice_logprobs(teacher, test, task, context.store, max_input_tokens=budget, evidence=evidence)
        correct = [bool(ex.id in scores and int(np.argmax(scores[ex.id])) == ex.answer) for ex in test]
    return {
        "name": spec.name,
        "measured": True,
        "acc": float(np.mean(correct)),
        "ci95": list(bootstrap_ci(correct)),
        "correct": correct,
        "n": len(correct),
        "params": None,
        "peak_memory_mb": None,
        "latency_ms_p50": None,
    }


def _server_free_form(context: StageContext, teacher, test, budget, evidence) -> list[bool]:
    """A server teacher on a free-form test split: asked to think step by step (the `cot`
    strategy, through the teacher cache, so it is asked once), judged by its final answer
    (`evaluation.freeform`: "The answer is N.", else its last number)."""
    from tinystudent.teachers import teach

    summary = teach(
        teacher, test, context.data.splits.task, "cot", context.store, max_new_tokens=256,
        max_input_tokens=budget, evidence=evidence,
    )  # fmt: skip
    right = {o.example_id for o in summary.outputs if o.matches_gold}
    return [ex.id in right for ex in test]


def write_rationales(context: StageContext, unit: UnitSpec) -> dict:
    """A `teach` unit: the teacher writes rationales for the training questions (cached)."""
    from tinystudent.teachers import teach

    spec, data = teacher_of(context.experiment, unit.args), context.data
    teacher = make_teacher(context, spec)
    summary = teach(
        teacher,
        teaching_examples(data, spec.teach_limit),
        data.splits.task,
        spec.strategy,
        context.store,
        train_examples=data.splits.train,
        k_shots=spec.k_shots,
        seed=context.experiment.task.seed,
        max_new_tokens=spec.max_new_tokens,
        max_input_tokens=teacher_budget(context.experiment, spec),
        evidence=teacher_evidence(context.experiment, spec),
    )
    teacher.close()
    release()
    return {k: v for k, v in summary.to_dict().items() if k != "outputs"}


def import_rationales(context: StageContext, unit: UnitSpec) -> dict:
    """An `import` unit: rationales written elsewhere, stored for the training questions."""
    from tinystudent.teachers import read_bundled, read_rationales_jsonl, read_tinyllm, store_rationales
    from tinystudent.teachers.gold import gold_solutions
    from tinystudent.teachers.rationale_files import ImportedRationale

    spec = teacher_of(context.experiment, unit.args)
    source, splits = spec.rationales, context.data.splits
    if source is None:
        raise ValueError(f"{unit.name}: the teacher names no rationales to import")
    if source.format == "tinyllm":
        imported = read_tinyllm(source.location, "train").rationales
    elif source.format == "bundled":
        imported = read_bundled("train")
    elif source.format == "gold":
        solutions = gold_solutions(splits.train)
        imported = [ImportedRationale(spec.name, i, text, source={"gold": True}) for i, text in solutions.items()]
    else:
        imported = read_rationales_jsonl(source.location, splits.train)
    wanted = [r for r in imported if source.teacher in (None, r.teacher)]
    return {"stored": store_rationales(context.store, wanted, splits.task, splits.train)}


def stored_rationales(store: Store, data: StudyData, unit: UnitSpec) -> dict[str, str]:
    """What a teach or import unit left in the store: its rationales for the training questions."""
    from tinystudent.teachers import load_rationales, rationales_for_training

    name, task, strategy = unit.args["rationales_of"], data.splits.task, unit.args["strategy"]
    if is_free_form(data.splits.train):  # only the rationales that reach the gold answer
        found = rationales_for_training(store, name, task, True, strategy)
    else:
        found = load_rationales(store, name, task, strategy)
    return {k: v for k, v in found.items() if k in data.train_ids}


def score_choices(context: StageContext, unit: UnitSpec) -> dict:
    """A `choice_scores` unit: the teacher's log-likelihood of each choice on the training
    questions (through the teacher cache), kept whole in its result for the training runs."""
    from tinystudent.teachers import teacher_choice_logprobs

    spec = context.experiment.teacher(unit.args["teacher"])
    if not spec.measured:
        raise ValueError(f"choice_kd:{spec.name}: an imported teacher has no choice probabilities")
    teacher = make_teacher(context, spec)
    scores = teacher_choice_logprobs(
        teacher,
        teaching_examples(context.data, spec.choice_limit),
        context.data.splits.task,
        context.store,
        max_input_tokens=teacher_budget(context.experiment, spec),
        evidence=teacher_evidence(context.experiment, spec),
    )
    teacher.close()
    release()
    return {"teacher": spec.name, "questions": len(scores), "scores": scores}
