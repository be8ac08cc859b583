"""`tinystudent loss`: a model's language-modelling loss in bits per byte on a reference text."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tinystudent.cli import app, emit_json, friendly_errors, parse_columns, quiet_libraries
from tinystudent.log import console, info


@app.command("loss")
@friendly_errors
def loss_command(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local model folder or GGUF file."),
    corpus: Optional[Path] = typer.Option(None, help="A UTF-8 text file to score. Default: text "
                                          "from --task (questions, choices and teacher rationales)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="The task whose text is the "
                                       "corpus when --corpus is not given (name or path)."),
    split: str = typer.Option("train", help="Split of --task whose text is scored."),
    teachers: Optional[list[str]] = typer.Option(None, "--teachers", help="Include these "
                                                 "teachers' cached rationales (repeat the option); "
                                                 "default: every teacher's, when any are cached."),
    max_bytes: Optional[int] = typer.Option(None, help="Score only the first N bytes of the corpus."),
    window: int = typer.Option(1024, help="Tokens per forward pass (capped at the model's context)."),
    stride: Optional[int] = typer.Option(None, help="New tokens each later window predicts "
                                         "[window // 2]; each keeps window - stride tokens of context."),
    batch_size: int = typer.Option(2, help="Windows per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."),
    columns: Optional[str] = typer.Option(None, help="Column mapping for your own JSONL/CSV task file."),
    seed: int = typer.Option(0, help="Seed of the split for sources that ship no split."),
    db: Optional[Path] = typer.Option(None, help="SQLite results database [default: $TINYSTUDENT_DB "
                                      "or tinystudent-results/results.sqlite]."),
    recompute: bool = typer.Option(False, help="Measure again even when this model, text and "
                                   "settings are already in the database."),
    trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Bits per byte of a model on a reference text: total negative log-likelihood in bits over
    the text's UTF-8 bytes, comparable across tokenizers. Stored in the results database."""
    quiet_libraries()
    from tinystudent.evaluation.bits_per_byte import cached_bits_per_byte, truncate_utf8
    from tinystudent.models import load_model
    from tinystudent.store import Store

    name, text, origin = load_corpus(corpus, task, split, teachers, seed, parse_columns(columns))
    full_bytes = len(text.encode("utf-8"))
    text = truncate_utf8(text, max_bytes)
    if max_bytes is not None and len(text.encode("utf-8")) < full_bytes:
        name = f"{name}[:{max_bytes} bytes]"
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    info(f"scoring {model} on {name}: {len(text.encode('utf-8')):,} bytes, {loaded.kind} model "
         f"on {loaded.device}")
    with Store(db) as store:
        result = cached_bits_per_byte(loaded, text, name, store, window, stride, batch_size, recompute)
    result.update({"corpus_origin": origin, "corpus_bytes_before_truncation": full_bytes,
                   "db": str(store.path)})
    if as_json:
        emit_json(result)
    else:
        print_loss(result)


def load_corpus(corpus: Path | None, task: str | None, split: str, teachers: list[str] | None,
                seed: int = 0, columns: dict | None = None) -> tuple[str, str, dict]:
    """(name, text, origin) of the reference text: a file, or a task split's own text."""
    if corpus is not None:
        if task is not None:
            raise ValueError("give either --corpus (a text file) or --task (its text is the corpus), not both")
        return _file_corpus(corpus)
    if task is None:
        raise ValueError("nothing to score: give --corpus FILE or --task TASK (its training text)")
    return _task_corpus(task, split, teachers, seed, columns)


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


def _task_corpus(task: str, split: str, teachers: list[str] | None, seed: int,
                 columns: dict | None) -> tuple[str, str, dict]:
    from tinystudent.evaluation.bits_per_byte import task_corpus
    from tinystudent.tasks import data_hash, load_task, normalize_split

    split = normalize_split(split)
    examples = load_task(task, seed=seed, columns=columns).split(split)
    rationales, used = task_rationales(task, split, examples, teachers)
    name = f"task:{task}/{split}" + (f"+rationales:{','.join(used)}" if used else "")
    origin = {"source": "task", "task": task, "split": split, "examples": len(examples),
              "data_hash": data_hash(examples), "rationale_teachers": used}
    return name, task_corpus(examples, rationales), origin


def task_rationales(task: str, split: str, examples: list, teachers: list[str] | None
                    ) -> tuple[dict[str, list[str]], list[str]]:
    """Teachers' rationales for the examples, from `tinystudent.teachers` when it provides them.

    Returns (example id -> rationales in teacher order, the teachers used). Without a
    `tinystudent.teachers.load_rationales` the corpus is the questions and choices only.
    """
    import importlib

    try:
        load_rationales = importlib.import_module("tinystudent.teachers").load_rationales
    except (ImportError, AttributeError):
        if teachers:
            raise ValueError("--teachers needs tinystudent.teachers.load_rationales, which this "
                             "installation lacks; leave --teachers out to score questions and "
                             "choices only") from None
        return {}, []
    raise ValueError("tinystudent.teachers.load_rationales exists but `tinystudent loss` does not "
                     "read it yet; give --corpus FILE instead")


def print_loss(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['model']}: bits per byte")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("corpus", result["corpus"]), ("corpus sha256", result["corpus_sha256"]),
            ("bytes", f"{result['bytes']:,}"), ("tokens predicted", f"{result['tokens']:,}"),
            ("nll (bits)", f"{result['nll_bits']:,.1f}"),
            ("bits per token", f"{result['bits_per_token']:.4f}"),
            ("bits per byte", f"{result['bits_per_byte']:.4f}"),
            ("windows x tokens (stride)", f"{result['windows']} x {result['window_used']} "
                                          f"({result['stride_used']})"),
            ("tokenizer round-trip exact", str(result["lossless"])),
            ("stored as", f"model loss {result['loss_id']} in {result['db']}"
                          + (" (already measured)" if result["cached"] else ""))]
    for label, value in rows:
        table.add_row(label, str(value))
    console.print(table)
