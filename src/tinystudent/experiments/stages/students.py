"""Students: each one's folder (scaled down and recovered when asked), its size, its bits per byte
on held-out text, and its accuracy before any training."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.experiments.config import StudentSpec
from tinystudent.experiments.data import StudyData
from tinystudent.experiments.stages.common import StageContext, release, write_loss_history
from tinystudent.experiments.stages.teachers import rationale_unit
from tinystudent.experiments.units import UnitSpec
from tinystudent.folders import refuse_links
from tinystudent.models.kinds import kind_adapter
from tinystudent.tasks.contamination import check_contamination
from tinystudent.tasks.schema import shared_choices

if TYPE_CHECKING:
    from tinystudent.experiments.plan_model import Plan

# --- planning -------------------------------------------------------------------------------


def plan_students(plan: Plan) -> None:
    """Each student's preparation and, but for an encoder (its head is random), its untrained score."""
    for spec in plan.experiment.students:
        student = plan_student(plan, spec)
        if student is not None:
            plan.students[spec.name] = student
            plan_untrained(plan, spec, student)


def plan_student(plan: Plan, spec: StudentSpec) -> UnitSpec | None:
    """Cut, recovery and the `student` unit (None until the recovery can be named)."""
    made = {}
    if spec.is_cut or spec.made_for_task:
        made["cut"] = plan.add(cut_unit(plan, spec)).key
        if spec.recover is not None:
            recovery = plan_recovery(plan, spec, made["cut"])
            if recovery is None:
                return None
            made["recovery"] = recovery.key
    payload = {
        "student": spec.payload(),
        "bpb": plan.experiment.measure_bits_per_byte,
        "heldout": plan.base["data"]["valid"],
    }
    args = {"student": spec.name, **made}
    return plan.add(UnitSpec("student", f"student {spec.name}", payload, tuple(made.values()), args))


def cut_unit(plan: Plan, spec: StudentSpec) -> UnitSpec:
    """The student scaled down, or saved as a kind made for the task (a classifier of its choices)."""
    payload: dict = {"student": spec.payload(include={"model", "keep_layers", "kind", "mlp_width"})}
    if spec.made_for_task:
        payload["labels"] = shared_choices(plan.data.splits.train)
    name = f"cut of {spec.name}" if spec.is_cut else f"{spec.name} as {spec.kind}"
    return UnitSpec("cut", name, payload, args={"student": spec.name})


def plan_recovery(plan: Plan, spec: StudentSpec, cut: str) -> UnitSpec | None:
    """Distil the model a student was cut from into it on the task's text and every teacher's
    rationales; keyed by that text, so it can be named once the rationales are in."""
    from tinystudent.evaluation.bits_per_byte import text_sha256

    sources = {t.name: plan.add(rationale_unit(plan, t)).key for t in plan.experiment.teachers if t.writes_rationales}
    if any(key not in plan.known.rationales for key in sources.values()):
        return None
    rationales = {name: plan.known.rationales[key] for name, key in sources.items()}
    payload = {
        "student": spec.payload(include={"model", "keep_layers", "kind", "recover", "mlp_width"}),
        "text": text_sha256("\n".join(recovery_texts(plan.data, spec, rationales))),
        "heldout": text_sha256(plan.data.heldout),
    }
    args = {"student": spec.name, "cut": cut, "rationales": sources}
    return plan.add(UnitSpec("recover", f"recovery of {spec.name}", payload, (cut, *sources.values()), args))


def recovery_texts(data: StudyData, spec: StudentSpec, rationales: dict[str, dict[str, str]]) -> list[str]:
    """The text a student recovers on: the training questions, the rationales, its extra tasks."""
    from tinystudent.distill.recover import recovery_texts as texts

    extra_tasks = spec.recover.extra_tasks if spec.recover else []
    other_questions = [ex for name in extra_tasks for ex in data.extra_train[name]]
    return texts(data.splits.train, rationales, other_questions)


def plan_untrained(plan: Plan, spec: StudentSpec, student: UnitSpec) -> None:
    """The student's test accuracy before training, once it is prepared and known not to be an encoder."""
    prepared = plan.result(student)
    if prepared is None or not kind_adapter(prepared["kind"]).next_token:  # an untrained encoder's head is random
        return
    payload = {**plan.base, "student": spec.payload(), "untrained": True}
    row = {
        "student": spec.name,
        "method": "-",
        "objective": "untrained",
        "seed": 0,
        "group": "untrained",
        "bits_per_byte": prepared.get("bits_per_byte"),
    }
    args = {"student_unit": student.key, "row": row}
    plan.add(UnitSpec("student_eval", f"{spec.name} / untrained", payload, (student.key,), args))


# --- work -----------------------------------------------------------------------------------


def cut(context: StageContext, unit: UnitSpec) -> dict:
    """A `cut` unit: the student scaled down from its model, in the results folder."""
    from tinystudent.models.students import scale_down

    spec = context.experiment.student(unit.args["student"])
    folder = refuse_links(context.out_dir / "students" / spec.name, context.out_dir)
    labels = shared_choices(context.data.splits.train) if spec.made_for_task else None
    path = scale_down(spec.model, spec.keep_layers, folder, kind=spec.kind, mlp_width=spec.mlp_width, labels=labels)
    return {"path": str(path)}


def recover_student(context: StageContext, unit: UnitSpec) -> dict:
    """A `recover` unit: distil the model a student was cut from into it (`distill.recover`)."""
    from tinystudent.distill.recover import recover

    spec = context.experiment.student(unit.args["student"])
    assert spec.recover is not None  # a recover unit is planned for a student with `recover` only
    rationales = {name: context.known.rationales[key] for name, key in unit.args["rationales"].items()}
    texts = recovery_texts(context.data, spec, rationales)
    check_contamination(context.data.splits.test, {}, passages=texts)
    result = recover(
        context.needed(unit.args["cut"])["path"],
        spec.model,
        texts,
        context.data.heldout,
        spec.recover,
        refuse_links(context.out_dir / "students" / f"{spec.name}-recovery", context.out_dir),
        device=context.experiment.device,
        measure=context.bits_per_byte,
    )
    release()
    write_loss_history(context.log(unit), result.loss_history)
    return result.summary()


def prepare(context: StageContext, unit: UnitSpec) -> dict:
    """A `student` unit: the student's folder, kind, size and bits per byte on held-out text."""
    from tinystudent.models import count_parameters, load_model

    spec, args = context.experiment.student(unit.args["student"]), unit.args
    recovery = context.needed(args["recovery"]) if "recovery" in args else None
    path = recovery["path"] if recovery else context.needed(args["cut"])["path"] if "cut" in args else spec.model
    loaded = load_model(path, device=context.experiment.device, kind=spec.kind)
    params = count_parameters(loaded.model)
    bpb = (
        context.bits_per_byte(loaded)
        if context.experiment.measure_bits_per_byte and loaded.adapter.decoder_only
        else None
    )
    result = {
        "path": path,
        "kind": loaded.kind,
        "params": params["total"],
        "non_embedding_params": params["non_embedding"],
        "bits_per_byte": bpb,
        "recovery": recovery,
    }
    del loaded
    release()
    return result


def evaluate_untrained(context: StageContext, unit: UnitSpec) -> dict:
    """A `student_eval` unit: the prepared student on the test split, in its own process."""
    return context.evaluate(
        context.needed(unit.args["student_unit"])["path"], unit, scoring=context.student_scoring(True)
    )
