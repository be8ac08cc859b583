"""`tinystudent teach`: have a teacher answer or explain a task's questions, each output once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tinystudent.commands.app import app, emit_json, friendly_errors, parse_columns, print_measures
from tinystudent.commands.options import config_options
from tinystudent.log import progress, quiet_libraries, stderr, warn
from tinystudent.teachers.settings import HttpSettings, LocalSettings


def _read_template(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such template file")
    return path.read_text(encoding="utf-8")


def _servers(base_url: Optional[list[str]]) -> str | list[str] | None:
    """`--base-url` given once is one server (its cache identity names it, as always); repeated or
    comma-separated, a list of servers of one model (its identity names the model, not them)."""
    urls = [url.strip() for given in base_url or [] for url in given.split(",") if url.strip()]
    if len(urls) > 1:
        return urls
    return urls[0] if urls else None


PARTIAL_FAILURE = 3  # exit code: some questions have outputs, some failed
# Settings that make_teacher (and a study's teacher entry) takes and `teach` has no option for.
SERVER_SETTINGS_IN_FILES_ONLY = ("backoff", "echo_max_tokens", "cooldown")
LOCAL_SETTINGS_IN_FILES_ONLY = ("kind", "revision")


@app.command("teach")
@friendly_errors
@config_options(HttpSettings, into="server_settings", skip=SERVER_SETTINGS_IN_FILES_ONLY, ranges=True)
@config_options(LocalSettings, into="local_settings", skip=LOCAL_SETTINGS_IN_FILES_ONLY, ranges=True)
def teach_command(
    teacher: str = typer.Option(
        ...,
        "--teacher",
        help="Local model (Hub id, folder, GGUF) or, with --base-url, the model name the server knows.",
    ),
    task: str = typer.Option(..., "--task", "-t", help="A named task or a path to benchmark files."),
    split: str = typer.Option("train", help="train, validation (valid) or test."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N questions of the split."),
    strategy: str = typer.Option(
        "teacher_forcing_cot", help="zero_shot, few_shot, cot, teacher_forcing_cot or choice_logprobs."
    ),
    base_url: Optional[list[str]] = typer.Option(
        None,
        metavar="URL",
        help="An OpenAI-compatible server (vLLM, llama.cpp, Ollama, tinystudent serve): http://host:port/v1. "
        "Repeat it or separate URLs with commas for several servers of one model sharing the requests.",
    ),
    api_key_env: Optional[str] = typer.Option(
        None, help="Environment variable holding the server's API key (its name, not the key)."
    ),
    server_settings: Optional[dict] = None,  # replaced by HttpSettings' options; holds those given
    k_shots: int = typer.Option(2, min=0, help="In-context examples drawn from the train split."),
    seed: int = typer.Option(0, help="Seed for drawing in-context examples and for sampling."),
    max_new_tokens: int = typer.Option(128, min=1, help="Most tokens the teacher writes per question."),
    temperature: float = typer.Option(0.0, min=0, help="0 for greedy decoding; above 0 samples."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass when sampling."),
    template: Optional[Path] = typer.Option(None, help="A file replacing the strategy's prompt template."),
    shot_template: Optional[Path] = typer.Option(None, help="A file replacing the in-context example template."),
    max_rationale_tokens: Optional[int] = typer.Option(None, min=1, help="Trim rationales to this many tokens."),
    max_input_tokens: Optional[int] = typer.Option(
        None,
        min=8,
        help="Fit each prompt to this many tokens by shortening the evidence of the question and its in-context "
        "examples (see --evidence), never their questions [default: what the teacher takes] (local teachers).",
    ),
    evidence: str = typer.Option(
        "cut",
        help="How evidence longer than the budget is shortened: cut (its end is cut) or select (the sentences "
        "most related to the question are kept, in their order, BM25).",
    ),
    keep: str = typer.Option(
        "all",
        help="all, or matching: only outputs whose stated answer is the gold one count as kept (all stay cached).",
    ),
    local_settings: Optional[dict] = None,  # replaced by LocalSettings' options; holds those given
    columns: Optional[str] = typer.Option(None, help="Column mapping for your own JSONL/CSV (see eval)."),
    split_seed: int = typer.Option(0, help="Seed of the split for sources that ship no split."),
    db: Optional[Path] = typer.Option(
        None, help="SQLite results database [default: $TINYSTUDENT_DB or tinystudent-results/results.sqlite]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Ask a teacher about every question of a split and cache each output: a second run costs no
    model call, and a stopped run resumes where it stopped. A failed or empty output is not cached
    (a second run asks again); the exit code is 1 when every question failed, 3 when some did."""
    quiet_libraries()
    from tinystudent.evaluation.fit import check_strategy
    from tinystudent.store import Store
    from tinystudent.teachers import make_teacher

    _check_strategy(strategy)
    check_strategy(evidence)
    split, examples, pool = _questions(task, split, limit, columns, split_seed, strategy, k_shots)
    servers = _servers(base_url)
    settings = (server_settings if servers else local_settings) or {}  # the others do not apply
    with Store(db) as store:  # opened first: a bad --db fails before the teacher is loaded
        backend = make_teacher(teacher, servers, api_key_env, **settings)
        _announce(backend, teacher, task, split, len(examples), strategy)
        summary = _teach_with_progress(
            backend,
            examples,
            task,
            strategy,
            store,
            template,
            shot_template,
            train_examples=pool,
            k_shots=k_shots,
            seed=seed,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            max_rationale_tokens=max_rationale_tokens,
            keep=keep,
            max_input_tokens=max_input_tokens,
            evidence=evidence,
        )
    result = _teach_result(summary, teacher, task, split, store.path)
    if as_json:
        emit_json(result)
    else:
        print_summary(result, summary.outputs[:1])
    _exit_on_failures(summary)


def _check_strategy(strategy: str) -> None:
    from tinystudent.teachers import SCORING, STRATEGIES

    if strategy not in STRATEGIES and strategy != SCORING:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES) + [SCORING]}")


def _questions(
    task: str, split: str, limit: Optional[int], columns: Optional[str], split_seed: int, strategy: str, k_shots: int
) -> tuple[str, list, Optional[list]]:
    """The split's name as stored, its first `limit` questions and the train split in-context
    examples are drawn from (None when the task has none: a warning says so where it matters)."""
    from tinystudent.tasks import load_task, normalize_split

    data = load_task(task, seed=split_seed, columns=parse_columns(columns))
    split = normalize_split(split)
    examples = data.split(split)[:limit] if limit else data.split(split)
    pool = data.splits.get("train")
    if pool is None and strategy in ("few_shot", "teacher_forcing_cot") and k_shots:
        warn(f"{task} has no train split: in-context examples are drawn from {split} (never the question itself)")
    return split, examples, pool


def _announce(backend, teacher: str, task: str, split: str, n: int, strategy: str) -> None:
    where = getattr(backend, "base_url", None) or getattr(getattr(backend, "loaded", None), "device", "")
    stderr.print(f"teaching {task}/{split}: {n} questions, strategy {strategy}, teacher {teacher} ({where})")


def _teach_with_progress(
    backend,
    examples,
    task: str,
    strategy: str,
    store,
    template: Optional[Path],
    shot_template: Optional[Path],
    **options,
):
    """`teachers.teach` with a progress bar counting cached, generated and failed outputs; the
    teacher is closed at the end, whatever happens."""
    from tinystudent.teachers import teach

    with progress() as bar:
        counts = {"cached": 0, "generated": 0, "failed": 0}
        row = bar.add_task("teacher outputs", total=len(examples), status="")

        def advance(status: str, output) -> None:
            counts[status] += 1
            bar.update(row, advance=1, status=", ".join(f"{k} {v}" for k, v in counts.items()))

        try:
            return teach(
                backend,
                examples,
                task,
                strategy,
                store,
                template=_read_template(template),
                shot_template=_read_template(shot_template),
                on_output=advance,
                **options,
            )
        finally:
            backend.close()


def _teach_result(summary, teacher: str, task: str, split: str, db: Path) -> dict:
    """What `teach --json` prints: the summary, what was asked for and where the outputs are cached."""
    return {
        **summary.to_dict(),
        "teacher": teacher,
        "task": task,
        "split": split,
        "cache_teacher": summary.teacher,
        "cache_task": summary.task,
        "db": str(db),
    }


def _exit_on_failures(summary) -> None:
    """Exit 1 when every question failed, PARTIAL_FAILURE when some did (saying so on stderr)."""
    if summary.failed:
        stderr.print(
            f"[red]{summary.failed} of {summary.n} questions failed[/red] (not cached: "
            "running the same command again retries only them)"
        )
        raise typer.Exit(1 if summary.failed == summary.n else PARTIAL_FAILURE)


def print_summary(result: dict, sample) -> None:
    measures = ("n", "generated", "cached", "failed", "matching", "unparsed", "kept", "model_calls", "seconds")
    rows = [*((name, result[name]) for name in measures), ("stored in", result["db"])]
    print_measures(f"{result['teacher']} on {result['task']}/{result['split']} ({result['strategy']})", rows)
    for error in result["errors"][:3]:
        stderr.print(f"[red]failed:[/red] {error}")
    for written in sample:
        shown = written.text if written.text is not None else written.choice_logprobs
        stderr.print(f"[dim]example {written.example_id}:[/dim] {shown}")
