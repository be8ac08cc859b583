"""Small models working together: ensembles and a debate of the members' best runs, mutual
learning, and members teaching each other with their rationales (see the collab package)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinystudent.experiments.config import CollaborationSpec, ScoringPass
from tinystudent.experiments.stages.common import StageContext, release
from tinystudent.experiments.stages.teachers import peer_teacher, rationale_unit
from tinystudent.experiments.stages.training import train_unit
from tinystudent.experiments.stored import stored_eval_result
from tinystudent.experiments.units import UnitSpec
from tinystudent.models.kinds import kind_adapter

if TYPE_CHECKING:
    from tinystudent.experiments.plan_model import Plan
    from tinystudent.tasks import Example

GROUP = {"group": "collaboration"}

# --- planning -------------------------------------------------------------------------------


def plan_collaboration(plan: Plan) -> None:
    """The collaboration units, once every member's training runs are known."""
    spec = plan.experiment.collaboration
    if not spec:
        return
    members = best_runs(plan, [*spec.members, *(spec.debate_members or [])])
    if members is None:
        return
    names = [n for n in spec.members if n in members]
    if spec.self_consistency:
        for name in names:
            plan.add(self_consistency_unit(plan, spec.self_consistency, name, members[name]))
    debaters = [n for n in (spec.debate_members or spec.members) if n in members]
    if spec.debate_rounds and len(debaters) >= 2:
        plan.add(debate_unit(plan, spec, debaters, members))
    if len(names) < 2:
        return
    if spec.ensemble:
        for method in ("average", "vote"):
            plan.add(ensemble_unit(plan, method, names, members))
    if spec.mutual_learning:
        plan.add(mutual_unit(plan, spec, names))
    if spec.collaborative_teaching:
        plan_collaborative_teaching(plan, names)


def best_runs(plan: Plan, names: list[str]) -> dict[str, dict] | None:
    """Each named student's training run with the best validation accuracy (the first of equals),
    leaving out students with none; None until every one of their runs has finished."""
    best: dict[str, dict] = {}
    for name in dict.fromkeys(names):
        units = plan.taught.get(name)
        if units is None or any(unit.key not in plan.known.results for unit in units):
            return None
        for row in map(plan.done, units):
            current = best.get(name)
            if current is None or row["train"].get("valid_acc", 0) > current["train"].get("valid_acc", 0):
                best[name] = row
    return best


def debate_unit(plan: Plan, spec: CollaborationSpec, names: list[str], members: dict[str, dict]) -> UnitSpec:
    test = plan.data.splits.test
    asked = len(test[: spec.debate_limit]) if spec.debate_limit else len(test)
    payload = {
        **plan.base,
        "debate": spec.debate_rounds,
        "limit": spec.debate_limit,
        "members": [members[n]["run_key"] for n in names],
        "unparsed": "picked by likelihood",
    }
    row = {
        **GROUP,
        "objective": "debate",
        "student": "+".join(names),
        "members": [members[n]["label"] for n in names],
        "method": "-",
        "seed": 0,
    }
    subset = f" ({asked} test questions)" if asked < len(test) else ""
    keys = tuple(members[n]["run_key"] for n in names)
    return UnitSpec("debate", f"debate of {' + '.join(names)}{subset}", payload, keys, {"members": keys, "row": row})


def self_consistency_unit(plan: Plan, samples: int, name: str, member: dict) -> UnitSpec:
    """A member's best run answering each test question by `samples` sampled chains of thought,
    their answers voted on (self-consistency, Wang et al. 2023)."""
    payload = {**plan.base, "self_consistency": samples, "member": member["run_key"]}
    row = {
        **GROUP,
        "objective": f"self_consistency@{samples}",
        "members": [member["label"]],
        "student": name,
        "method": member.get("method", "-"),
        "seed": member.get("seed", 0),
    }
    args = {"member": member["run_key"], "samples": samples, "row": row}
    label = f"self-consistency ({samples} samples) of {member['label']}"
    return UnitSpec("self_consistency", label, payload, (member["run_key"],), args)


def ensemble_unit(plan: Plan, method: str, names: list[str], members: dict[str, dict]) -> UnitSpec:
    keys = [members[n]["run_key"] for n in names]
    payload = {**plan.base, "ensemble": method, "members": keys}
    row = {
        **GROUP,
        "objective": f"ensemble:{'avg' if method == 'average' else 'vote'}",
        "members": [members[n]["label"] for n in names],
        "student": "+".join(names),
        "method": "-",
        "seed": members[names[0]].get("seed", 0),
    }
    args = {"method": method, "names": names, "members": keys, "row": row}
    return UnitSpec("ensemble", f"ensemble {method} of {' + '.join(names)}", payload, tuple(keys), args)


def mutual_unit(plan: Plan, spec: CollaborationSpec, names: list[str]) -> UnitSpec:
    experiment = plan.experiment
    changes = spec.training.as_written()
    students = [plan.students[n].key for n in names]
    payload = {
        **plan.base,
        "mutual": names,
        "training": experiment.training.as_written(),
        "seed": experiment.seeds[0],
        "students": students,
        **({"changes": changes} if changes else {}),
    }
    bits = {n: plan.done(plan.students[n]).get("bits_per_byte") for n in names}
    args = {"names": names, "students": students, "seed": experiment.seeds[0], "bits_per_byte": bits}
    return UnitSpec("mutual", f"mutual learning of {' + '.join(names)}", payload, tuple(students), args)


def mutual_rows(unit: UnitSpec, result: dict) -> list[dict]:
    """One study row per peer of a mutual-learning unit."""
    names = unit.args["names"]
    return [
        {
            **peer,
            "label": f"{peer['peer']} / mutual with {'+'.join(n for n in names if n != peer['peer'])}",
            "run_key": f"{result['run_key']}:{peer['peer']}",
            **GROUP,
            "objective": "mutual",
            "student": peer["peer"],
            "method": "full",
            "seed": unit.args["seed"],
            "members": names,
            "bits_per_byte": unit.args["bits_per_byte"][peer["peer"]],
        }
        for peer in result["peers"]
    ]


def plan_collaborative_teaching(plan: Plan, names: list[str]) -> None:
    """Each member that writes (not an encoder) writes teacher-forcing rationales; each learns
    from the other members'."""
    prepared = {n: plan.done(plan.students[n]) for n in names}
    writers = [n for n in names if kind_adapter(prepared[n]["kind"]).generates]
    peers = {n: peer_teacher(n, prepared[n]["path"]) for n in writers}
    sources = {n: plan.add(rationale_unit(plan, peers[n], peer=n)).key for n in writers}
    if any(key not in plan.known.rationales for key in sources.values()):
        return
    for name in names:
        spec = plan.experiment.student(name)
        if name not in writers:
            plan.note(f"skipping {name} / rationale:peers: an encoder student cannot write rationales")
            continue
        others = {f"peer:{o}": sources[o] for o in writers if o != name and plan.known.rationales[sources[o]]}
        teachers = {"peers": {k: peers[k[5:]].model_dump() for k in others}}
        row = {**GROUP, "objective": "collab_teaching", "members": names}
        run = ("full", "rationale:peers", plan.experiment.seeds[0])
        plan.add(train_unit(plan, spec, plan.students[name], run, teachers, others, row))


# --- work -----------------------------------------------------------------------------------


def debate(context: StageContext, unit: UnitSpec) -> dict:
    """A `debate` unit: the members' best runs debate the first test questions."""
    from tinystudent.collab.debate import debate as run_debate
    from tinystudent.collab.debate import debate_eval_result
    from tinystudent.models import load_model

    spec, splits = context.experiment.collaboration, context.data.splits
    assert spec is not None  # a debate is planned only with a collaboration block
    examples = splits.test[: spec.debate_limit] if spec.debate_limit else splits.test
    checkpoints = [context.needed(key)["train"].get("checkpoint") for key in unit.args["members"]]
    loaded = [load_model(path, device=context.experiment.device) for path in checkpoints]
    questions = fit_for_debate(context, examples, loaded[0].tokenizer)
    result = run_debate(loaded, questions, rounds=spec.debate_rounds, max_new_tokens=48)
    evaluated = debate_eval_result(result, examples, splits.task, context.experiment.task.test_split)
    evaluation_id = context.store.save_evaluation(evaluated, unit.key)
    del loaded
    release()
    return {**evaluated.summary(), "evaluation_id": evaluation_id}


def fit_for_debate(context: StageContext, examples: list[Example], tokenizer) -> list[Example]:
    """Each question's evidence cut so its first debate prompt fits the experiment's input
    budget (later rounds add the other members' short answers on top)."""
    from tinystudent.collab.debate import first_prompt
    from tinystudent.evaluation.fit import fit_example, token_counter

    budget, evidence = context.experiment.task.max_input_tokens, context.experiment.task.evidence
    if not budget:
        return examples
    count = token_counter(tokenizer)
    return [fit_example(ex, first_prompt, count, tokenizer, budget, evidence).example for ex in examples]


def self_consistency(context: StageContext, unit: UnitSpec) -> dict:
    """A `self_consistency` unit: the member's kept checkpoint on test, `samples` chains of thought
    sampled per question and voted on."""
    samples = unit.args["samples"]
    checkpoint = context.needed(unit.args["member"])["train"]["checkpoint"]
    scoring = ScoringPass(f"self_consistency:{samples}", "self_consistency", 0, samples)
    task = context.experiment.task
    return context.evaluate(str(checkpoint), unit, scoring=scoring, budget=task.max_input_tokens)


def ensemble(context: StageContext, unit: UnitSpec) -> dict:
    """An `ensemble` unit: the members' test answers combined (`average` or `vote`)."""
    from tinystudent.collab.results import ensemble_eval_result

    method, names = unit.args["method"], unit.args["names"]
    results = [stored_eval_result(context.store, context.needed(key)["evaluation_id"]) for key in unit.args["members"]]
    group = ensemble_eval_result(results, method, name=f"ensemble-{method}({'+'.join(names)})")
    evaluation_id = context.store.save_evaluation(group, unit.key)
    return {**group.summary(), "evaluation_id": evaluation_id}


def mutual(context: StageContext, unit: UnitSpec) -> dict:
    """A `mutual` unit: the members learn together (deep mutual learning), each then measured."""
    from tinystudent.distill import train_mutual

    spec, splits, names = context.experiment.collaboration, context.data.splits, unit.args["names"]
    assert spec is not None  # mutual learning is planned only with a collaboration block
    changes = spec.training.as_written()
    weights = {"answer": 1.0, "mutual": 1.0}
    config = context.train_config(None, **{**changes, "method": "full", "seed": unit.args["seed"], "weights": weights})
    paths = [context.needed(key)["path"] for key in unit.args["students"]]
    results = train_mutual(paths, splits.train, splits.valid, config, context.run_dir(unit), task=splits.task)
    release()
    peers = []
    for name, result in zip(names, results):
        summary = context.evaluate(
            str(result.checkpoint), unit, name, budget=config.max_input_tokens, evidence=config.evidence
        )
        peers.append({**summary, "peer": name, "checkpoint": str(result.checkpoint)})
    return {"peers": peers}
