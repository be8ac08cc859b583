"""`tinystudent train`: teach one student a task from one or several teachers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors, parse_columns
from tinystudent.commands.options import config_options
from tinystudent.distill.config import TrainConfig
from tinystudent.distill.objective_spec import parse_objective, term_names
from tinystudent.distill.terms import CHOICE_LOGPROBS, RATIONALES, TEACHER_MODELS, term, terms
from tinystudent.folders import check_output_folder
from tinystudent.log import info, progress, quiet_libraries, stdout


def _objective_weight(text: str) -> tuple[str, float | dict[str, float]] | None:
    """(term, weight) of one `--objective` entry, or None when it is not one: a term alone, or a
    term learnt from teacher models with the models it learns from (`logit_kd:A+B`, at 1 each);
    the teachers of the other terms come from --teachers."""
    try:
        objective = parse_objective(text, term_names("one_student"))
    except ValueError:
        return None
    if objective.teacher is None or objective.every_teacher:
        return objective.term, 1.0
    if term(objective.term).teacher_data != TEACHER_MODELS or "" in objective.teacher.split("+"):
        return None
    return objective.term, dict.fromkeys(objective.teacher.split("+"), 1.0)


def objective_weights(
    objectives: str, overrides: list[str], teachers: Sequence[str] = (), teacher_models: Sequence[str] = ()
) -> dict:
    """`answer,rationale,logit_kd:A+B` plus `--weight rationale=0.5` -> the config's weights block.

    The answer term is always on (weight 1) unless a `--weight answer=0` turns it off. A
    per-teacher weight (`rationale.flan-t5-xl=2`) leaves the other `teachers` (of terms learnt from
    teacher models: the `teacher_models`) at the shared weight.
    """
    chosen = [o.strip() for o in objectives.split(",") if o.strip()]
    unknown = [o for o in chosen if _objective_weight(o) is None]
    if unknown:
        raise ValueError(
            f"--objective: unknown {unknown}; choose from {', '.join(term_names('one_student'))} (comma-separated; "
            "a term learnt from teacher models may name them: logit_kd:A+B)"
        )
    weights: dict = {"answer": 1.0}
    for text in chosen:
        name, value = _objective_weight(text)  # type: ignore[misc]  # checked above
        if name != "answer":
            weights[name] = value
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(
                f"--weight expects name=value (answer=1, rationale=0.5, rationale.flan-t5-xl=2), got {item!r}"
            )
        try:
            objective = parse_objective(name, term_names(), separator=".")
        except ValueError as err:
            raise ValueError(f"--weight {item!r}: {err}") from None
        head, teacher = objective.term, objective.teacher
        if teacher:
            current = weights.get(head, 0.0)
            spread = teacher_models if term(head).teacher_data == TEACHER_MODELS else teachers
            table = current if isinstance(current, dict) else {t: current for t in spread}
            table[teacher] = float(value)
            weights[head] = table
        else:
            weights[head] = float(value)
    return weights


def teacher_models(items: list[str]) -> dict[str, str]:
    """`--teacher-model` values (`PATH`, or `NAME=PATH` for several) -> teacher name -> model;
    a model given without a name is named by itself.

    Raises:
        ValueError: a name given twice, or an empty name or path."""
    found: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name.strip(), path.strip()) if sep else (item.strip(), item.strip())
        if not name or not path:
            raise ValueError(f"--teacher-model expects PATH or NAME=PATH (qwen=Qwen/Qwen2.5-7B), got {item!r}")
        if name in found:
            raise ValueError(f"--teacher-model: teacher name {name!r} is given twice; give each model its own name")
        found[name] = path
    return found


def _teacher_argument(models: dict[str, str], names: list[str]) -> str | dict[str, str] | None:
    """What `train_student` gets as its teacher: the named models; one model named by itself as
    given (so its runs keep their key); none given: the first of --teachers."""
    if len(models) == 1 and next(iter(models)) == next(iter(models.values())):
        return next(iter(models))
    return models or (names[0] if names else None)


def _rationales_from_file(path: Path) -> dict[str, dict[str, str]]:
    """Teacher -> example id -> rationale, from a JSONL file (training keeps those of training
    questions and refuses a teacher with none: `distill.data.check_rationales`)."""
    from tinystudent.teachers import read_rationales_jsonl

    found: dict[str, dict[str, str]] = {}
    for item in read_rationales_jsonl(path):
        found.setdefault(item.teacher, {})[item.example_id] = item.text
    return found


def rationale_strategies() -> list[str]:
    """The strategies whose cached outputs are rationales: those that write one, and imports."""
    from tinystudent.teachers.prompts import STRATEGIES

    return [name for name, spec in STRATEGIES.items() if spec.writes_rationale] + ["imported"]


def _from_cache(
    store,
    teachers: list[str],
    task: str,
    strategy: Optional[str],
    want_rationales: bool,
    want_scores: bool,
    free_form: bool = False,
) -> tuple[dict, dict]:
    """Rationales and choice log-probabilities of each teacher from the teacher cache (on a
    free-form task, only rationales that reach the gold answer)."""
    from tinystudent.teachers import SCORING, rationales_for_training
    from tinystudent.teachers.cache import rows_for

    rationales, scores = {}, {}
    shipped = _bundled_rationales() if task == "bioasq" else {}
    for teacher in teachers:
        if want_rationales:
            rationales[teacher] = rationales_for_training(store, teacher, task, free_form, strategy)
            if not rationales[teacher] and teacher in shipped and strategy in (None, "imported"):
                info(f"using the rationales of {teacher} shipped with tinystudent for bioasq")
                rationales[teacher] = shipped[teacher]
            if not rationales[teacher]:
                raise ValueError(
                    f"no cached rationales of teacher {teacher!r} for task {task!r} in {store.path}; "
                    f"run `tinystudent teach --teacher {teacher} --task {task}` or "
                    "`tinystudent rationales import` first, or give --rationales FILE.jsonl"
                )
        if want_scores:
            rows = [r for r in rows_for(store, teacher, task, SCORING) if r.get("choice_logprobs")]
            if not rows:
                raise ValueError(
                    f"no cached choice log-probabilities of teacher {teacher!r} for task {task!r}; "
                    f"run `tinystudent teach --teacher {teacher} --task {task} --strategy {SCORING}` first"
                )
            scores[teacher] = {r["example_id"]: json.loads(r["choice_logprobs"]) for r in rows}
    return rationales, scores


def _bundled_rationales() -> dict[str, dict[str, str]]:
    from tinystudent.teachers import read_bundled

    found: dict[str, dict[str, str]] = {}
    for item in read_bundled("train"):
        found.setdefault(item.teacher, {})[item.example_id] = item.text
    return found


def _config(config_file: Optional[Path], options: dict) -> TrainConfig:
    """The config file's fields, overridden by the options given on the command line."""
    from tinystudent.experiments.config import read_yaml  # no key twice, bounded nesting and size

    base: dict = {}
    if config_file is not None:
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: no such config file")
        base = read_yaml(config_file, "training config") or {}
        if not isinstance(base, dict):
            raise ValueError(f"{config_file}: a training config must be a mapping of TrainConfig fields")
    merged = {**base, **options}
    if "lora" in options:
        merged["lora"] = {**base.get("lora", {}), **options["lora"]}
    from pydantic import ValidationError

    try:
        return TrainConfig(**merged)
    except ValidationError as err:  # one line per bad field, named as the option or config key
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} (got {e.get('input')!r:.60})" for e in err.errors()
        )
        raise ValueError(f"training config: {problems}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80]


@app.command("train")
@friendly_errors
@config_options(
    TrainConfig,
    into="config_overrides",
    skip=("weights",),  # --objective and --weight
    aliases={
        "logit_kd_divergence": "--divergence",
        "early_stopping_patience": "--patience",
        "lora.target_modules": "--lora-targets",
        "lora.merge": "--merge",
    },
)
def train_command(
    student: str = typer.Option(..., "--student", "-s", help="Hub id, local model folder or GGUF file."),
    task: str = typer.Option(..., "--task", "-t", help="A named task or a path to benchmark files."),
    teachers: Optional[str] = typer.Option(
        None,
        help="Teachers whose cached outputs to learn from, "
        "comma-separated (as named to `tinystudent teach` or the import); gold_solutions: the task's own "
        "worked solutions (GSM8K's).",
    ),
    objective: str = typer.Option(
        "answer",
        help=f"{', '.join(term_names('one_student'))}; several comma-separated (the answer term is always on). "
        + "; ".join(f"{t.name}: {t.summary}" for t in terms() if not t.with_peers)
        + ".",
    ),
    weight: list[str] = typer.Option(
        [], help="Objective weight, repeatable: rationale=0.5, rationale.flan-t5-xl=2, answer=0."
    ),
    keep_layers: Optional[str] = typer.Option(
        None, help="Scale the student down first: first:N, last:N, every:K, spread:N or layer indices 0,4,29."
    ),
    mlp_width: Optional[float] = typer.Option(
        None,
        min=0.01,
        max=0.99,
        help="Scale the student down first "
        "to this fraction of each feed-forward block's units "
        "(those of largest weight magnitude), e.g. 0.5.",
    ),
    kind: Optional[str] = typer.Option(
        None,
        help="Save the student as this model kind first: classifier (one output per label, for a task whose "
        "questions all offer the same choices: one pass per question instead of one per choice) or another "
        "registered kind [default: read from the model's config].",
    ),
    recover: Optional[int] = typer.Option(
        None,
        min=1,
        help="With --keep-layers/--mlp-width: first distil the full "
        "model into the cut one for N steps on the task's text (its "
        "evidence, questions and the teachers' rationales), then train.",
    ),
    rationales_file: Optional[Path] = typer.Option(
        None, "--rationales", help="Rationales as JSONL {id, teacher, rationale} instead of the teacher cache."
    ),
    strategy: Optional[str] = typer.Option(
        None, help="Only cached rationales of this strategy (cot, teacher_forcing_cot, imported) [default: any]."
    ),
    teacher_model: list[str] = typer.Option(
        [],
        help=f"Teacher model for {'/'.join(t.name for t in terms() if t.teacher_model)} "
        "[default: the first of --teachers]; repeatable as NAME=PATH for several, which --objective "
        "logit_kd:A+B (or uld_kd:A+B, onpolicy_kd:A+B) and --weight logit_kd.A=2 name; a model given "
        "alone is named by itself.",
    ),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="YAML file of TrainConfig fields; the options below override it."
    ),
    config_overrides: Optional[dict] = None,  # replaced by TrainConfig's options; holds those given
    train_limit: Optional[int] = typer.Option(None, min=1, help="Train on the first N training questions."),
    test: bool = typer.Option(True, "--test/--no-test", help="Measure the kept student on the test split."),
    test_limit: Optional[int] = typer.Option(None, min=1, help="Only the first N test questions."),
    out: Optional[Path] = typer.Option(None, help="Run folder [tinystudent-runs/<student>-<task>-...]."),
    restart: bool = typer.Option(False, help="Start over instead of resuming the run in --out."),
    columns: Optional[str] = typer.Option(None, help="Column mapping for your own JSONL/CSV (see eval)."),
    split_seed: int = typer.Option(0, help="Seed of the split for sources that ship no split."),
    db: Optional[Path] = typer.Option(
        None, help="SQLite results database (teacher cache, stored teacher logits, runs)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train a student on a task from answers, teachers' rationales, choice probabilities or
    logits; validate, keep the best checkpoint and measure it on the test split. A stopped run
    resumes from its last checkpoint when started again with the same options."""
    quiet_libraries()
    from tinystudent.store import Store
    from tinystudent.tasks import load_task

    if strategy is not None and strategy not in rationale_strategies():
        raise ValueError(f"--strategy {strategy!r}: rationales come from one of {rationale_strategies()}")
    cut = keep_layers is not None or mlp_width is not None
    made = kind is not None  # saved as that kind first
    if recover and not cut:
        raise ValueError("--recover needs --keep-layers or --mlp-width: it repairs a cut student from the full model")
    names = [t.strip() for t in (teachers or "").split(",") if t.strip()]
    models = teacher_models(teacher_model)
    weights = objective_weights(objective, weight, names, list(models or {}))
    config = _config(config_file, {**(config_overrides or {}), "weights": weights})
    data = load_task(task, seed=split_seed, columns=parse_columns(columns))
    train = data.split("train")[:train_limit] if train_limit else data.split("train")
    valid = data.split("validation")
    test_examples = (data.split("test")[:test_limit] if test_limit else data.split("test")) if test else None
    parts = (keep_layers, f"ff{mlp_width:g}" if mlp_width else None, kind)
    shape = "-".join(part for part in parts if part) or "all"
    out = out or Path("tinystudent-runs") / _slug(
        f"{Path(student).name}-{shape}-{Path(task).name}-{objective}-{config.method}"
    )
    check_output_folder(out)
    with Store(db) as store:
        rationales, scores = _teacher_data(store, names, task, strategy, rationales_file, config.weights, train)
        teacher = None
        if any(t.teacher_model and config.weights.configured(t.name) for t in terms()):
            teacher = _teacher_argument(models, names)
            info(f"token-level distillation from the teacher model(s) {teacher}")
        if cut or made:
            from tinystudent.distill.train import main_process_first
            from tinystudent.models.students import scale_down
            from tinystudent.tasks.schema import shared_choices

            labels = shared_choices(train) if _made_for_task(kind) else None
            with main_process_first(config.device):  # built once under accelerate launch
                student_path = str(
                    scale_down(student, keep_layers, out / "student", kind=kind, mlp_width=mlp_width, labels=labels)
                )
                if recover:
                    student_path = _recover(
                        student_path,
                        student,
                        train,
                        valid,
                        data.splits.get("test", []),
                        rationales,
                        recover,
                        out / "recovery",
                        config.device,
                    )
        else:
            student_path = student
        result = _run(
            student_path,
            train,
            valid,
            config,
            out,
            rationales=rationales,
            scores=scores,
            teacher=teacher,
            task=task,
            test_examples=test_examples,
            restart=restart,
            db=store.path,
        )
        result.student = student if not (cut or made) else f"{student} ({shape})"
        summary = {**result.summary(), "student_path": student_path, "teachers": names}
        if not _is_main():
            return
        store.save_run(result.run_key, "train", "done", result.config, summary)
    if as_json:
        emit_json(summary)
    else:
        print_result(summary)


def _teacher_data(store, names, task, strategy, rationales_file, weights, train) -> tuple[dict, dict]:
    from tinystudent.teachers.gold import GOLD_SOLUTIONS, gold_solutions

    wanted = {t.teacher_data for t in terms() if t.teacher_data and weights.configured(t.name)}
    want_rationales, want_scores = RATIONALES in wanted, CHOICE_LOGPROBS in wanted
    gold = {GOLD_SOLUTIONS: gold_solutions(train)} if GOLD_SOLUTIONS in names and want_rationales else {}
    names = [name for name in names if name != GOLD_SOLUTIONS]
    rationales: dict = {}
    scores: dict = {}
    if rationales_file is not None:
        rationales = _rationales_from_file(rationales_file)
        if names:
            rationales = {t: r for t, r in rationales.items() if t in names}
        want_rationales = False
    if (want_rationales or want_scores) and not names and not gold:
        raise ValueError("the rationale and choice_kd objectives need --teachers (or --rationales FILE.jsonl)")
    from tinystudent.tasks.schema import is_free_form

    cached_rationales, scores = _from_cache(
        store, names, task, strategy, want_rationales, want_scores, is_free_form(train)
    )
    return {**(rationales or cached_rationales), **gold}, scores


def _recover(cut: str, parent: str, train, valid, test, rationales: dict, steps: int, out: Path, device: str) -> str:
    """Recovery of the cut student from its parent (`distill.recover`), on passages none of which
    holds a test question; returns its folder."""
    from tinystudent.distill import RecoveryConfig
    from tinystudent.distill.recover import heldout_text, recover, recovery_texts
    from tinystudent.tasks.contamination import check_contamination

    texts = recovery_texts(train, rationales)
    check_contamination(test or [], {}, passages=texts)
    result = recover(
        cut,
        parent,
        texts,
        heldout_text(valid, RecoveryConfig().heldout_bytes),
        RecoveryConfig(steps=steps),
        out,
        device=device,
    )
    info(
        f"recovery: {result.bits_per_byte_before:.3f} -> {result.bits_per_byte_after:.3f} bits per byte on "
        f"held-out validation text, {result.steps} steps, {result.seconds:.0f} s"
    )
    return result.path


def _made_for_task(kind: Optional[str]) -> bool:
    """Whether `--kind` names a kind made for the task's choices (a classifier), checking the name."""
    from tinystudent.models.kinds import kind_adapter

    return kind is not None and kind_adapter(kind).made_for_task


def _is_main() -> bool:
    """Under `accelerate launch`/`torchrun` only the first process reports."""
    return os.environ.get("RANK", "0") == "0"


def _run(student, train, valid, config, out, *, rationales, scores, teacher, task, test_examples, restart, db):
    from tinystudent.distill import train_student

    def run(**progress_kwargs):
        return train_student(
            student,
            train,
            valid,
            config,
            out,
            rationales=rationales or None,
            choice_logprobs=scores or None,
            teacher=teacher,
            task=task,
            test_examples=test_examples,
            resume=not restart,
            teacher_logits_db=db,
            **progress_kwargs,
        )

    if not _is_main():
        return run()
    with progress() as bar:
        row = bar.add_task("training", total=None, status="")

        def advance(step: dict) -> None:
            losses = ", ".join(f"{v:.4f}" for v in step["loss"])
            valid_acc = [v for v in step["valid_acc"] if v is not None]
            shown = f"loss {losses} | {step['tokens_per_s']:,.0f} tok/s | lr {step['lr']:.2e}"
            if valid_acc:
                shown += f" | valid acc {valid_acc[0]:.4f}"
            bar.update(row, completed=step["step"], total=step["total_steps"], status=shown)

        return run(on_step=advance)


def print_result(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['student']} trained on {summary['task']} ({summary['method']})")
    table.add_column("measure")
    table.add_column("value", justify="right")

    def fmt(value):
        return (
            "-"
            if value is None
            else (
                f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
            )
        )

    for name in (
        "params",
        "trainable_params",
        "non_embedding_params",
        "steps",
        "train_loss",
        "valid_acc_before",
        "valid_acc",
        "best_step",
        "test_acc",
        "tokens_per_s",
        "peak_memory_mb",
        "train_seconds",
        "checkpoint",
    ):
        table.add_row(name, fmt(summary.get(name)))
    stdout.print(table)
