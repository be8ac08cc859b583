"""`tinystudent eval`: measure one model on one task."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors, parse_columns, print_measures
from tinystudent.log import quiet_libraries


@app.command("eval")
@friendly_errors
def eval_command(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local model folder or GGUF file."),
    task: str = typer.Option(
        ...,
        "--task",
        "-t",
        help="arc_easy, arc_challenge, openbookqa, sciq, bioasq, pubmedqa, qasper_yesno, gsm8k, arithmetic, "
        "logical_reasoning, or a path to a benchmark file or folder.",
    ),
    split: str = typer.Option("test", help="train, validation (valid) or test."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N questions of the split."),
    mode: str = typer.Option(
        "loglikelihood",
        help="loglikelihood (score each choice), generate "
        "(answer with a letter, or a free-form task's answer at once) or generate_cot (think step by step "
        "first; free-form tasks such as gsm8k are judged by exact match, strict and flexible) or "
        "self_consistency (free-form: --samples chains of thought, their answers voted on).",
    ),
    batch_size: int = typer.Option(
        16, help="Most questions per forward pass (batches are also limited by tokens, longest questions first)."
    ),
    max_input_tokens: Optional[int] = typer.Option(
        None,
        help="Fit every input to this many tokens by "
        "shortening its evidence (see --evidence), never its question "
        "[default: what the model takes].",
    ),
    evidence: str = typer.Option(
        "cut",
        help="How evidence longer than the budget is shortened: cut (its end is cut) or select (the "
        "sentences most related to the question are kept, in their order, BM25).",
    ),
    num_fewshot: int = typer.Option(
        0,
        help="Solved examples before each question: from the train split (loglikelihood mode; any mode of "
        "a free-form task), or for gsm8k lm-eval's chain-of-thought exemplars (up to 8).",
    ),
    samples: int = typer.Option(8, help="self_consistency: chains of thought sampled per question, then voted on."),
    temperature: float = typer.Option(0.7, help="self_consistency: the sampling temperature."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16."),
    columns: Optional[str] = typer.Option(
        None, help="Column mapping for your own JSONL/CSV: question=q,choices=A|B|C|D,answer=label[,id=..,context=..]."
    ),
    seed: int = typer.Option(0, help="Seed of the split for sources that ship no split."),
    db: Optional[Path] = typer.Option(
        None, help="SQLite results database (default: $TINYSTUDENT_DB or tinystudent-results/results.sqlite)."
    ),
    trust_remote_code: bool = typer.Option(False, help="Run the model repository's own code."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    run_key: Optional[str] = typer.Option(
        None,
        hidden=True,
        help="The experiment unit this evaluation is for: it replaces the unit's earlier evaluation, if any.",
    ),
) -> None:
    """Measure one model on one task: accuracy, 95% interval, majority baseline and cost."""
    quiet_libraries()
    from tinystudent.evaluation.fit import check_strategy
    from tinystudent.evaluation.save import evaluate_and_save
    from tinystudent.tasks import load_task

    for name, value, least in (
        ("--limit", limit, 1),
        ("--batch-size", batch_size, 1),
        ("--max-input-tokens", max_input_tokens, 8),
        ("--num-fewshot", num_fewshot, 0),
        ("--samples", samples, 1),
    ):
        if value is not None and value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    from tinystudent.evaluation.evaluate import Sampling

    sampling = Sampling(samples, temperature) if mode == "self_consistency" else None
    data = load_task(task, seed=seed, columns=parse_columns(columns))
    summary = evaluate_and_save(
        data,
        model,
        task,
        split,
        db,
        limit=limit,
        seed=seed,
        mode=mode,
        batch_size=batch_size,
        max_input_tokens=max_input_tokens,
        num_fewshot=num_fewshot,
        evidence=check_strategy(evidence),
        sampling=sampling,
        run_key=run_key,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    if as_json:
        emit_json(summary)
    else:
        print_eval(summary)


def _score_rows(summary: dict) -> list[tuple[str, str]]:
    if summary.get("exact_match"):
        return [
            (f"exact_match ({how})", f"{em['score']:.4f} ({em['ci95'][0]:.4f} - {em['ci95'][1]:.4f})")
            for how, em in summary["exact_match"].items()
        ] + [("most common answer (baseline)", f"{summary['majority_baseline']:.4f}")]
    return [
        ("acc", f"{summary['acc']:.4f}"),
        ("acc 95% interval", f"{summary['ci95'][0]:.4f} - {summary['ci95'][1]:.4f}"),
        ("acc_norm", "-" if summary["acc_norm"] is None else f"{summary['acc_norm']:.4f}"),
        ("majority baseline", f"{summary['majority_baseline']:.4f}"),
    ]


def print_eval(summary: dict) -> None:
    rows = [
        ("questions", summary["n"]),
        *_score_rows(summary),
        ("unparsed answers", summary["unparsed"]),
        ("inputs cut to fit", f"{summary['truncated']} (evidence shortened, question kept)"),
        ("parameters", f"{summary['params']:,}"),
        ("peak memory (MB)", f"{summary['peak_memory_mb']} ({summary['peak_memory_scope']})"),
        ("latency p50 / p95 (ms/question)", f"{summary['latency_ms_p50']} / {summary['latency_ms_p95']}"),
        ("questions per second", summary["questions_per_s"]),
        ("generations per question", summary.get("generations_per_question", 1)),
        ("stored as", f"evaluation {summary['evaluation_id']} in {summary['db']}"),
    ]
    print_measures(f"{summary['model']} on {summary['task']}/{summary['split']}", rows)
