"""Training: every student x fine-tuning method x objective x seed, each measured on the test split."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from tinystudent.distill.objective_spec import ObjectiveSpec, parse_objective
from tinystudent.distill.terms import CHOICE_LOGPROBS, RATIONALES, TEACHER_MODELS, term
from tinystudent.experiments.config import Experiment, StudentSpec
from tinystudent.experiments.stages.common import StageContext, release, write_loss_history
from tinystudent.experiments.stages.teachers import choice_scores_unit, rationale_unit, teacher_payload
from tinystudent.experiments.units import UnitSpec
from tinystudent.models.kinds import kind_adapter

if TYPE_CHECKING:
    from tinystudent.experiments.plan_model import Plan


class Unknown:
    """What `plan_train` answers while a run cannot be named yet (the student is not prepared)."""


UNKNOWN = Unknown()

# --- planning -------------------------------------------------------------------------------


def plan_training(plan: Plan) -> None:
    """Each student's training runs, in the config's order."""
    for spec in plan.experiment.students:
        plan.taught[spec.name] = plan_student_training(plan, spec)


def plan_student_training(plan: Plan, spec: StudentSpec) -> list[UnitSpec] | None:
    """The student's runs, or None while some cannot be named yet (those that can are planned)."""
    methods, units, settled = plan.experiment.methods_of(spec), [], True
    for method, objective, seed in product(methods.finetune, methods.objectives, plan.experiment.seeds_of(spec)):
        unit = plan_train(plan, spec, method, objective, seed)
        if isinstance(unit, UnitSpec):
            units.append(unit)
        settled = settled and not isinstance(unit, Unknown)
    return units if settled else None


def plan_train(plan: Plan, spec: StudentSpec, method: str, objective: str, seed: int) -> UnitSpec | Unknown | None:
    """One training run and the rationale units it reads (a student that writes no text reads
    them instead, `distill.data.with_rationale`); UNKNOWN until the student is prepared."""
    student, parsed = plan.students.get(spec.name), plan.experiment.objective(objective)
    if student is None:
        return UNKNOWN
    named = taught_by(plan.experiment, parsed)
    learns = term(parsed.term).teacher_data
    if learns == TEACHER_MODELS:
        prepared = plan.result(student)
        if prepared is not None and not kind_adapter(prepared["kind"]).next_token:
            kind = prepared["kind"]
            plan.note(
                f"skipping {spec.name} / {objective}: {'an' if kind[0] in 'aeiou' else 'a'} {kind} student has no "
                "next-token distribution to match a teacher model's"
            )
            return None
    # A teacher model's logits depend on the model (and its input budget), not on how it teaches.
    part = {n: teacher_payload(plan, plan.experiment.teacher(n), learns == TEACHER_MODELS)["teacher"] for n in named}
    sources, scored = {}, {}
    if learns == RATIONALES:
        writers = [plan.experiment.teacher(n) for n in named if plan.experiment.teacher(n).writes_rationales]
        sources = {t.name: plan.add(rationale_unit(plan, t)).key for t in writers}
    elif learns == CHOICE_LOGPROBS:
        scored = {n: plan.add(choice_scores_unit(plan, plan.experiment.teacher(n))).key for n in named}
    return plan.add(train_unit(plan, spec, student, (method, objective, seed), part, sources, scores=scored))


def taught_by(experiment: Experiment, objective: ObjectiveSpec) -> list[str]:
    """The teachers an objective learns from (`all`: every teacher, for rationales every one that
    writes them, for choice probabilities every one measured here, for a teacher model's logits
    every one running a local model; `logit_kd:A+B`: A and B)."""
    if objective.teacher is None:
        return []
    if term(objective.term).teacher_data == TEACHER_MODELS:  # logit_kd:A+B, or all the local models
        return experiment.teacher_models_of(objective)
    if objective.every_teacher:
        gives = {RATIONALES: lambda t: t.writes_rationales, CHOICE_LOGPROBS: lambda t: t.measured}
        data = term(objective.term).teacher_data
        return [t.name for t in experiment.teachers if gives.get(data or "", lambda t: True)(t)]
    return [objective.teacher]


def train_unit(
    plan: Plan,
    spec: StudentSpec,
    student: UnitSpec,
    run: tuple[str, str, int],
    teachers: dict,
    rationales: dict[str, str],
    row: dict | None = None,
    scores: dict[str, str] | None = None,
) -> UnitSpec:
    """A `train` unit.

    Args:
        run: (method, objective, seed).
        teachers: what the run depends on of each teacher it learns from.
        rationales: teacher name -> key of the unit whose rationales it learns from.
        row: what its row in the study adds to its result (nothing: a taught run).
        scores: teacher name -> key of the unit that scored its choices (choice-level KD).
    """
    method, objective, seed = run
    payload = {
        **plan.base,
        "student": spec.payload(),
        "method": method,
        "objective": objective,
        "seed": seed,
        "training": plan.experiment.training.as_written(),
        "teachers": teachers,
    }
    args = {
        "student": spec.name,
        "student_unit": student.key,
        "method": method,
        "objective": objective,
        "seed": seed,
        "rationales": rationales,
        "choice_scores": scores or {},
        "row": row or {},
    }
    label = f"{spec.name} / {method} / {objective} / seed {seed}"
    return UnitSpec("train", label, payload, (student.key, *rationales.values(), *(scores or {}).values()), args)


# --- work -----------------------------------------------------------------------------------


def train(context: StageContext, unit: UnitSpec) -> dict:
    """A `train` unit: train the student with one method and objective, then measure it on the
    test split in its own process."""
    from tinystudent.distill import train_student

    args, splits = unit.args, context.data.splits
    spec, prepared = context.experiment.student(args["student"]), context.needed(args["student_unit"])
    weights, rationales, scores = objective_inputs(context, unit)
    models = teacher_models(context, unit)  # loaded once, by train_student, which keys the run by them
    config = training_config(context, spec, args["method"], args["seed"], weights)
    result = train_student(
        prepared["path"],
        splits.train,
        splits.valid,
        config,
        context.run_dir(unit),
        rationales=rationales or None,
        choice_logprobs=scores or None,
        teacher=models or None,
        task=splits.task,
    )
    release()
    trained = result.to_dict() if hasattr(result, "to_dict") else dict(result.__dict__)
    write_loss_history(context.log(unit), trained.pop("loss_history", []))
    resolved = config.weights.resolve({RATIONALES: list(rationales), TEACHER_MODELS: list(models)})
    scoring = context.student_scoring(resolved.active("rationale"))
    summary = context.evaluate(
        str(result.checkpoint), unit, scoring=scoring, budget=config.max_input_tokens, evidence=config.evidence
    )
    return {
        "train": trained,
        **summary,
        "student": spec.name,
        "method": args["method"],
        "objective": args["objective"],
        "seed": args["seed"],
        "group": "taught",
        "bits_per_byte": prepared.get("bits_per_byte"),
        "train_seconds": trained.get("train_seconds"),
    }


def training_config(context: StageContext, spec: StudentSpec, method: str, seed: int, weights: dict):
    options = {"method": method, "seed": seed, "weights": weights}
    if method == "lora":
        options["lora"] = {**context.experiment.training.as_written().get("lora", {}), "merge": True}
    return context.train_config(spec, **options)


def teacher_models(context: StageContext, unit: UnitSpec) -> dict[str, str]:
    """Teacher name -> the local model a token-level objective learns from (`logit_kd:A+B`: both),
    which `train_student` loads once for the run and keys the run by; none for other objectives."""
    objective = parse_objective(unit.args["objective"])
    if term(objective.term).teacher_data != TEACHER_MODELS:
        return {}
    experiment = context.experiment
    return {name: experiment.teacher(name).model_id for name in experiment.teacher_models_of(objective)}


def objective_inputs(context: StageContext, unit: UnitSpec) -> tuple[dict, dict, dict]:
    """The objective's weights (the answer, and its term at 1: per teacher model for the
    token-level terms), and the rationales or choice scores it learns from (`Term.teacher_data`)."""
    objective = parse_objective(unit.args["objective"])
    found = term(objective.term)
    weights = {"answer": 1.0, found.name: 1.0}
    if found.teacher_data == RATIONALES:
        rationales = {name: context.known.rationales[key] for name, key in unit.args["rationales"].items()}
        return weights, rationales, {}
    if found.teacher_data == CHOICE_LOGPROBS:
        from tinystudent.distill.data import ensemble_choice_logprobs

        names = list(unit.args["choice_scores"])
        scores = {name: context.needed(key)["scores"] for name, key in unit.args["choice_scores"].items()}
        if len(scores) > 1:  # choice_kd:all: one target, the teachers' ensemble
            scores = {"+".join(names): ensemble_choice_logprobs(scores)}
        return weights, {}, scores
    if found.teacher_data == TEACHER_MODELS:  # each teacher model at 1, as `train --objective logit_kd:A+B`
        return {"answer": 1.0, found.name: dict.fromkeys(teacher_models(context, unit), 1.0)}, {}, {}
    if found.in_experiments and not found.teacher_model:
        return weights, {}, {}
    raise ValueError(f"objective {unit.args['objective']!r} is not supported by the experiment runner yet")
