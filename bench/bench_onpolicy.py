"""On-policy distillation steps: tinystudent's `onpolicy_kd` vs TRL's GKDTrainer, tokens/s and losses.

Both sides distil the same teacher, SmolLM2-135M-Instruct (the offline copy `load_model` finds),
into the same student, 17 of its 30 layers (the bioasq study's largest cut, built by `scale_down`),
on the same BioASQ training questions (our answer prompts, evidence cut to `--max-input` tokens),
with the same batch, steps, AdamW, learning rate (cosine decay, no warm-up), clipping, precision
and fully on-policy settings: every row's answer is sampled by the student (lambda 1) at
temperature 1, at most `--new-tokens` tokens, and the loss is the generalised JSD with beta 0.5
(GKD, Agarwal et al. 2024) at temperature 1, with no cross-entropy.

- tinystudent: `train_student` with `weights: {answer: 0, onpolicy_kd: 1}`: the student writes in
  our decoder (a row that is done leaves the batch at once), the divergence runs through the fused,
  chunked output layer.
- baseline: TRL's `GKDTrainer` (`lmbda=1`, `beta=0.5`, `temperature=1`), given each question as a
  conversation whose chat template only concatenates the turns, so it sees our prompt text.
  TRL is a dev dependency (`pip install -e .[dev]` installs trl 1.16.0, whose GKDTrainer sits
  in `trl.experimental.gkd`); without it this script says so and measures tinystudent alone.

Tokens/s counts every token of every trained sequence (prompt + the student's continuation,
padding left out) over every step, the first included, on both sides: ours from the loop's own
count (`TrainResult.tokens_per_s`), TRL's from the attention mask of each batch its loss sees
after generation, over `train_runtime`. TRL 1.16.0 logs its loss on another scale than our
per-token mean (about 64 times ours in the 2026-12-08 run, the number of tokens a row writes:
a sum over tokens, not a mean), and the question order differs (each side's own seeded sampler),
so the loss curves are compared in shape, not value or step by step. Each side runs in a fresh
process.

    .venv/bin/python bench/bench_onpolicy.py                        # CPU: 8 steps of 4 questions
    .venv/bin/python bench/bench_onpolicy.py --steps 20 --batch 8 --new-tokens 32 --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
from pathlib import Path
from queue import Empty

TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEEP = [0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 29]  # the bioasq study's 17 layers
CONCATENATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
NO_TRL = (
    "the baseline, TRL's GKDTrainer, needs trl, which is not installed in this environment (it is not a "
    "dependency of tinystudent): install it in another environment to compare"
)


def train_config(args):
    from tinystudent.distill import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup_ratio=0.0,
        weights={"answer": 0.0, "onpolicy_kd": 1.0},
        onpolicy_lambda=1.0,
        onpolicy_max_new_tokens=args.new_tokens,
        onpolicy_temperature=1.0,
        logit_kd_divergence="jsd",
        jsd_beta=0.5,
        temperature=1.0,
        max_input_tokens=args.max_input,
        eval_before=False,
        precision="fp32",
        device="cpu",
        seed=0,
    )


def questions(args):
    from tinystudent.tasks import load_task

    return load_task("bioasq").split("train")[: args.steps * args.batch]


def run_tinystudent(args, student: Path, work: Path) -> dict:
    from tinystudent.distill import train_student

    result = train_student(
        str(student),
        questions(args),
        [],
        train_config(args),
        work / "run",
        teacher=TEACHER,
        task="bioasq",
        resume=False,
    )
    losses = [h["loss"] for h in result.loss_history]
    return {"tokens_per_s": result.tokens_per_s, "losses": losses, "seconds": result.train_seconds}


def trl_gkd():
    """TRL's GKD trainer and config, wherever this release keeps them; None without TRL."""
    try:
        from trl import GKDConfig, GKDTrainer
    except ImportError:
        try:
            from trl.experimental.gkd import GKDConfig, GKDTrainer
        except ImportError:
            return None
    return GKDConfig, GKDTrainer


def conversations(args, tokenizer) -> list[dict]:
    """Each question as TRL's conversational rows: our answer prompt, then the gold answer."""
    from tinystudent.distill.data import build_features
    from tinystudent.evaluation.prompts import prompt_style

    config, examples = train_config(args), questions(args)
    features, _ = build_features(
        examples,
        tokenizer,
        kind="causal",
        style=prompt_style("bioasq", examples),
        rationales={},
        choice_logprobs={},
        rationale_prompt=config.rationale_prompt,
        max_input=config.max_input_tokens,
        max_answer=config.max_answer_tokens,
        max_rationale=config.max_rationale_tokens,
        evidence=config.evidence,
    )
    rows = []
    for ex in examples:
        f = features[ex.id]
        prompt = tokenizer.decode(f.prompt, skip_special_tokens=True)
        answer = tokenizer.decode(f.choices[f.gold], skip_special_tokens=True)
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return rows


def run_trl(args, student: Path, work: Path) -> dict:
    from datasets import Dataset

    from tinystudent.models import load_model

    found = trl_gkd()
    if found is None:
        return {"missing": True}
    config_class, trainer_class = found
    loaded, teacher = load_model(str(student), device="cpu"), load_model(TEACHER, device="cpu")
    tokenizer = loaded.tokenizer
    tokenizer.chat_template = CONCATENATE
    config = config_class(
        output_dir=str(work / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lmbda=1.0,
        beta=0.5,
        temperature=1.0,
        max_new_tokens=args.new_tokens,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
    )
    trainer = trainer_class(
        model=loaded.model,
        teacher_model=teacher.model,
        args=config,
        train_dataset=Dataset.from_list(conversations(args, tokenizer)),
        processing_class=tokenizer,
    )
    counted = {"tokens": 0}
    compute_loss = trainer.compute_loss

    def counting(model, inputs, *rest, **options):  # the batch after generation: prompt + continuation
        counted["tokens"] += int(inputs["attention_mask"].sum())
        return compute_loss(model, inputs, *rest, **options)

    trainer.compute_loss = counting
    out = trainer.train()
    seconds = out.metrics["train_runtime"]
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"tokens_per_s": counted["tokens"] / seconds, "losses": losses, "seconds": seconds}


def _child(kind: str, args, student: str, queue) -> None:
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tinystudent.log import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = run_tinystudent if kind == "tinystudent" else run_trl
    with tempfile.TemporaryDirectory() as work:
        queue.put(runner(args, Path(student), Path(work)))


def measure(kind: str, args, student: Path) -> dict:
    """One side in a fresh process, so neither inherits the other's threads or memory."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(kind, args, str(student), queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise SystemExit(
                    f"the {kind} side failed (exit code {process.exitcode}): its traceback is above"
                ) from None
    process.join()
    return result


def curve(losses: list[float]) -> str:
    return " ".join(f"{value:.4f}" for value in losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps on each side")
    parser.add_argument("--batch", type=int, default=4, help="questions per step")
    parser.add_argument("--new-tokens", type=int, default=64, help="most tokens the student writes per row")
    parser.add_argument("--max-input", type=int, default=256, help="tokens of each answer prompt (evidence cut)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per side; 0: torch's default")
    args = parser.parse_args()

    from tinystudent.log import quiet_libraries
    from tinystudent.models.students import scale_down

    quiet_libraries()
    with_trl = trl_gkd() is not None
    if not with_trl:
        print(f"{NO_TRL}; measuring tinystudent alone", flush=True)
    with tempfile.TemporaryDirectory() as root:
        student = scale_down(TEACHER, KEEP, Path(root) / "student")
        ours = measure("tinystudent", args, student)
        baseline = measure("trl", args, student) if with_trl else {"missing": True}
    print(
        f"teacher {TEACHER}, student its {len(KEEP)} layers {KEEP}; CPU, fp32; {args.steps} steps of "
        f"{args.batch} BioASQ questions, every answer written by the student (lambda 1, at most "
        f"{args.new_tokens} tokens, temperature 1), generalised JSD (beta 0.5)"
    )
    print(f"tinystudent onpolicy_kd : {ours['tokens_per_s']:10,.1f} tokens/s ({ours['seconds']:.1f} s)")
    print(f"  loss per step: {curve(ours['losses'])}")
    if baseline.get("missing"):
        print(f"TRL GKDTrainer          : not measured: {NO_TRL}")
        return
    print(f"TRL GKDTrainer          : {baseline['tokens_per_s']:10,.1f} tokens/s ({baseline['seconds']:.1f} s)")
    print(f"  loss per step: {curve(baseline['losses'])}")
    print(f"ratio tinystudent / TRL: tokens/s {ours['tokens_per_s'] / baseline['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
