"""Choice scoring side by side with lm-evaluation-harness, same model, same requests, same process.

Both score the same (prompt, choice) pairs, those `tinystudent eval` builds for the task, with
the same weights loaded once from the same folder in float32: lm-evaluation-harness through its
`HFLM.loglikelihood` (length-sorted batches of `--batch-size` requests, as `lm_eval --model hf
--batch_size N` runs them), tinystudent through `score_choices` (each prompt run once for all its
choices, token-budget batches). Prints the wall time of each, the ratio, and on how many
questions the two pick the same answer, by acc (sum of log-probabilities) and acc_norm (per byte).

lm-evaluation-harness is a benchmark dependency only: `pip install lm-eval==0.4.13`.

    .venv/bin/python bench/bench_lm_eval.py --task bioasq --split test
    .venv/bin/python bench/bench_lm_eval.py --task arc_easy --split validation --limit 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--task", default="bioasq")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tinystudent.evaluation.prompts import choice_context, choice_continuations, prompt_style
    from tinystudent.evaluation.scoring import score_choices
    from tinystudent.log import quiet_libraries
    from tinystudent.models import load_model
    from tinystudent.models.requests import ChoiceRequest
    from tinystudent.tasks import load_task

    quiet_libraries()
    loaded = load_model(args.model, device="cpu", dtype="float32")
    examples = load_task(args.task).split(args.split)
    examples = examples[: args.limit] if args.limit else examples
    style = prompt_style(args.task, examples)
    requests = [ChoiceRequest(choice_context(ex, style), choice_continuations(ex)) for ex in examples]
    pairs = [(r.context, c) for r in requests for c in r.continuations]
    prompt_tokens = sum(len(loaded.tokenizer.encode(r.context, add_special_tokens=False)) for r in requests)
    harness = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=args.batch_size, device="cpu")

    score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests[:2], args.batch_size)  # warm-up
    started = time.perf_counter()
    ours = score_choices(loaded.model, loaded.tokenizer, loaded.kind, requests, args.batch_size)
    ours_s = time.perf_counter() - started

    instances = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    started = time.perf_counter()
    with torch.no_grad():
        flat = [logprob for logprob, _ in harness.loglikelihood(instances, disable_tqdm=True)]
    theirs_s = time.perf_counter() - started
    theirs, k = [], 0
    for r in requests:
        theirs.append(flat[k : k + len(r.continuations)])
        k += len(r.continuations)

    def picks(scores, norm: bool) -> list[int]:
        return [
            int(np.argmax([s / len(c.encode("utf-8")) if norm else s for s, c in zip(row, r.continuations)]))
            for row, r in zip(scores, requests)
        ]

    same = sum(a == b for a, b in zip(picks(ours, False), picks(theirs, False)))
    same_norm = sum(a == b for a, b in zip(picks(ours, True), picks(theirs, True)))
    gap = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
    acc = np.mean([p == ex.answer for p, ex in zip(picks(ours, False), examples)])
    print(
        f"{args.model} on {args.task}/{args.split}: {len(requests)} questions, {len(pairs)} choices, "
        f"{prompt_tokens:,} prompt tokens; CPU, float32, {torch.get_num_threads()} threads, batch {args.batch_size}"
    )
    print(f"baseline lm-evaluation-harness HFLM.loglikelihood : {theirs_s:8.1f} s")
    print(f"tinystudent score_choices                         : {ours_s:8.1f} s")
    print(
        f"speed-up: {theirs_s / ours_s:.2f}x; same answer on {same}/{len(requests)} (acc) and "
        f"{same_norm}/{len(requests)} (acc_norm); max |log-likelihood difference| {gap:.2e}; acc {acc:.3f}"
    )
    if same != len(requests) or same_norm != len(requests):
        raise SystemExit("the two scorers disagree")


if __name__ == "__main__":
    main()
