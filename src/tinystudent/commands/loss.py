"""`tinystudent loss`: a model's language-modelling loss in bits per byte on a reference text."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors, parse_columns, print_measures
from tinystudent.log import info, progress, quiet_libraries


@app.command("loss")
@friendly_errors
def loss_command(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local model folder or GGUF file."),
    corpus: Optional[Path] = typer.Option(
        None, help="A UTF-8 text file to score. Default: text from --task (questions, choices and teacher rationales)."
    ),
    task: Optional[str] = typer.Option(
        None, "--task", "-t", help="The task whose text is the corpus when --corpus is not given (name or path)."
    ),
    split: str = typer.Option("train", help="Split of --task whose text is scored."),
    teachers: Optional[list[str]] = typer.Option(
        None,
        "--teachers",
        help="Include these "
        "teachers' cached rationales (comma-separated or "
        "repeated); default: every teacher's, when any "
        "are cached.",
    ),
    max_bytes: Optional[int] = typer.Option(None, help="Score only the first N bytes of the corpus."),
    window: int = typer.Option(1024, help="Tokens per forward pass (capped at the model's context)."),
    stride: Optional[int] = typer.Option(
        None, help="New tokens each later window predicts [window // 2]; each keeps window - stride tokens of context."
    ),
    batch_size: int = typer.Option(2, help="Windows per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."),
    columns: Optional[str] = typer.Option(None, help="Column mapping for your own JSONL/CSV task file."),
    seed: int = typer.Option(0, help="Seed of the split for sources that ship no split."),
    db: Optional[Path] = typer.Option(
        None, help="SQLite results database [default: $TINYSTUDENT_DB or tinystudent-results/results.sqlite]."
    ),
    recompute: bool = typer.Option(
        False, help="Measure again even when this model, text and settings are already in the database."
    ),
    trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Bits per byte of a model on a reference text: total negative log-likelihood in bits over
    the text's UTF-8 bytes, comparable across tokenizers. Stored in the results database."""
    quiet_libraries()
    from tinystudent.evaluation.bits_per_byte import cached_bits_per_byte, truncate_utf8
    from tinystudent.models import load_model
    from tinystudent.store import Store

    teachers = [t.strip() for entry in teachers or [] for t in entry.split(",") if t.strip()] or None
    with Store(db) as store:
        name, text, origin = load_corpus(store, corpus, task, split, teachers, seed, parse_columns(columns))
    full_bytes = len(text.encode("utf-8"))
    text = truncate_utf8(text, max_bytes)
    if max_bytes is not None and len(text.encode("utf-8")) < full_bytes:
        name = f"{name}[:{max_bytes} bytes]"
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    info(f"scoring {model} on {name}: {len(text.encode('utf-8')):,} bytes, {loaded.kind} model on {loaded.device}")
    with Store(db) as store, progress() as bar:
        windows = bar.add_task("windows", total=None, status="")

        def advance(done: int, total: int, nll_nats: float) -> None:
            bar.update(windows, completed=done, total=total)

        result = cached_bits_per_byte(
            loaded,
            text,
            name,
            store,
            window=window,
            stride=stride,
            batch_size=batch_size,
            recompute=recompute,
            on_progress=advance,
        )
    result.update({"corpus_origin": origin, "corpus_bytes_before_truncation": full_bytes, "db": str(store.path)})
    if as_json:
        emit_json(result)
    else:
        print_loss(result)


def load_corpus(
    store,
    corpus: Path | None,
    task: str | None,
    split: str,
    teachers: list[str] | None,
    seed: int = 0,
    columns: dict | None = None,
) -> tuple[str, str, dict]:
    """(name, text, origin) of the reference text: a file, or a task split's own text (its
    questions and choices, and the cached teacher rationales of its questions from `store`)."""
    if corpus is not None:
        if task is not None:
            raise ValueError("give either --corpus (a text file) or --task (its text is the corpus), not both")
        return _file_corpus(corpus)
    if task is None:
        raise ValueError("nothing to score: give --corpus FILE or --task TASK (its training text)")
    return _task_corpus(store, task, split, teachers, seed, columns)


def _file_corpus(path: Path) -> tuple[str, str, dict]:
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus file (give a UTF-8 text file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: byte {err.start} is not UTF-8; the corpus must be UTF-8 text") from None
    if not text:
        raise ValueError(f"{path}: the corpus file is empty")
    return f"file:{path.resolve()}", text, {"source": "file", "path": str(path.resolve())}


def _task_corpus(
    store, task: str, split: str, teachers: list[str] | None, seed: int, columns: dict | None
) -> tuple[str, str, dict]:
    from tinystudent.evaluation.bits_per_byte import task_corpus
    from tinystudent.tasks import data_hash, load_task, normalize_split

    split = normalize_split(split)
    examples = load_task(task, seed=seed, columns=columns).split(split)
    rationales, used = task_rationales(store, task, examples, teachers)
    name = f"task:{task}/{split}" + (f"+rationales:{','.join(used)}" if used else "")
    origin = {
        "source": "task",
        "task": task,
        "split": split,
        "examples": len(examples),
        "data_hash": data_hash(examples),
        "rationale_teachers": used,
    }
    return name, task_corpus(examples, rationales), origin


def task_rationales(
    store, task: str, examples: list, teachers: list[str] | None
) -> tuple[dict[str, list[str]], list[str]]:
    """Cached teacher rationales of the examples (`tinystudent.teachers.load_rationales`).

    Args:
        store: the open results database (the teacher cache lives there).
        teachers: whose rationales; default: every teacher with rationales cached for `task`.

    Returns:
        (example id -> rationales in teacher order, the teachers used). Only the examples given
        (one split) are looked up, so other splits' rationales never enter the text.
    """
    from tinystudent.teachers import load_rationales
    from tinystudent.teachers.cache import rows_for
    from tinystudent.teachers.teach import RATIONALE_STRATEGIES

    if not teachers:
        teachers = sorted(
            {
                row["teacher"]
                for row in rows_for(store, task=task)
                if row["strategy"] in RATIONALE_STRATEGIES and row["text"]
            }
        )
    wanted = {ex.id for ex in examples}
    by_example: dict[str, list[str]] = {}
    used = []
    for teacher in teachers:
        found = {i: t for i, t in load_rationales(store, teacher, task).items() if i in wanted}
        if not found:
            raise ValueError(
                f"no cached rationales of teacher {teacher!r} for the questions of "
                f"{task}; run `tinystudent teach` (or import them) first, or leave "
                "--teachers out"
            )
        used.append(teacher)
        for example_id, text in found.items():
            by_example.setdefault(example_id, []).append(text)
    return by_example, used


def print_loss(result: dict) -> None:
    rows = [
        ("corpus", result["corpus"]),
        ("corpus sha256", result["corpus_sha256"]),
        ("bytes", f"{result['bytes']:,}"),
        ("tokens predicted", f"{result['tokens']:,}"),
        ("nll (bits)", f"{result['nll_bits']:,.1f}"),
        ("bits per token", f"{result['bits_per_token']:.4f}"),
        ("bits per byte", f"{result['bits_per_byte']:.4f}"),
        ("windows x tokens (stride)", f"{result['windows']} x {result['window_used']} ({result['stride_used']})"),
        ("tokenizer round-trip exact", str(result["lossless"])),
        (
            "stored as",
            f"model loss {result['loss_id']} in {result['db']}" + (" (already measured)" if result["cached"] else ""),
        ),
    ]
    print_measures(f"{result['model']}: bits per byte", rows)
