"""GSM8K 8-shot chain of thought, side by side with lm-evaluation-harness, same model, same process.

Both generate greedily for the same prompts (lm-eval's `gsm8k_cot` layout: Wei et al.'s eight
exemplars, "Q: ...\\nA:", a blank line between them), until the same stop sequences ("Q:",
"</s>", "<|im_end|>") or 256 new tokens, with the same weights loaded once in float32:
lm-evaluation-harness through `HFLM.generate_until` (as `lm_eval --model hf --batch_size N`
runs it; its baseline), tinystudent through `evaluate_model(mode="generate_cot", num_fewshot=8)`
(shared exemplar prefix computed once for all batches, length-sorted batches, each row stopped at its
own stop sequence). Prints the wall time of each, questions per second and their ratio, both
exact matches (strict and flexible), and on how many questions lm-eval's own filters
(`RegexFilter`, `exact_match`) extract from our generations exactly what our extraction does.

lm-evaluation-harness is a dev dependency: `pip install -e .[dev]` installs lm-eval 0.4.13.

    .venv/bin/python bench/bench_gsm8k.py --limit 100 --batch-size 8
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-baseline", action="store_true", help="Time tinystudent only.")
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.models.huggingface import HFLM

    from tinystudent.evaluation import freeform
    from tinystudent.evaluation.evaluate import evaluate_model
    from tinystudent.log import quiet_libraries
    from tinystudent.models import load_model
    from tinystudent.tasks import load_task

    quiet_libraries()
    loaded = load_model(args.model, device="cpu", dtype="float32")
    examples = load_task("gsm8k").split("test")[: args.limit]
    shots = freeform.gsm8k_exemplars()[:8]
    # lm-eval's gsm8k_cot context, built from its template: doc_to_text "Q: {{question}}\nA:",
    # target_delimiter " ", fewshot_delimiter "\n\n", the exemplars' targets as they are written.
    exemplars = "".join(f"Q: {s.question}\nA: {freeform.solution_text(s.answer_text, s.rationale)}\n\n" for s in shots)
    contexts = [f"{exemplars}Q: {ex.question}\nA:" for ex in examples]
    assert contexts == [freeform.free_form_prompt(ex, shots, True) for ex in examples], "the prompts differ"

    evaluate_model(
        loaded, examples[:2], "gsm8k", "test", mode="generate_cot", batch_size=args.batch_size, num_fewshot=8
    )  # warm-up
    started = time.perf_counter()
    ours = evaluate_model(
        loaded, examples, "gsm8k", "test", mode="generate_cot", batch_size=args.batch_size, num_fewshot=8
    )
    ours_s = time.perf_counter() - started
    texts = [p.text or "" for p in ours.predictions]

    strict = RegexFilter(freeform.STRICT, 0)
    flexible = RegexFilter(freeform.FLEXIBLE, -1)
    same = sum(
        next(iter(strict.apply([[t]], [{}])))[0] == p.pred and next(iter(flexible.apply([[t]], [{}])))[0] == p.pred_norm
        for t, p in zip(texts, ours.predictions)
    )
    print(
        f"{args.model}, GSM8K test (carved, first {len(examples)}), 8-shot CoT, greedy, 256 new tokens at most; "
        f"CPU float32, {torch.get_num_threads()} threads, batch {args.batch_size}"
    )
    print(f"tinystudent: {ours_s:.1f} s ({len(examples) / ours_s:.3f} questions/s)")
    print(
        f"  exact_match strict {ours.exact_match['strict']['score']:.4f}, flexible {ours.exact_match['flexible']['score']:.4f}"
    )
    print(f"  lm-eval's filters on our generations extract what ours do on {same} of {len(examples)} questions")
    if args.skip_baseline:
        return

    harness = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=args.batch_size, device="cpu")
    settings = {"until": list(freeform.STOPS), "do_sample": False, "max_gen_toks": 256}
    instances = [
        Instance(request_type="generate_until", doc={}, arguments=(c, dict(settings)), idx=i)
        for i, c in enumerate(contexts)
    ]
    started = time.perf_counter()
    with torch.no_grad():
        theirs = harness.generate_until(instances, disable_tqdm=True)
    theirs_s = time.perf_counter() - started
    ignore = {"regexes_to_ignore": list(freeform.IGNORED), "ignore_case": True, "ignore_punctuation": False}
    scores = {}
    for name, flt in (("strict", strict), ("flexible", flexible)):
        answers = [row[0] for row in flt.apply([[t] for t in theirs], [{}] * len(theirs))]
        golds = [ex.answer_text for ex in examples]
        scores[name] = exact_match_hf_evaluate(answers, golds, **ignore)["exact_match"]
    identical = sum(a.strip() == b.strip() for a, b in zip(texts, theirs))
    print(f"lm-eval HF generate_until: {theirs_s:.1f} s ({len(examples) / theirs_s:.3f} questions/s)")
    print(f"  exact_match strict {scores['strict']:.4f}, flexible {scores['flexible']:.4f}")
    print(f"  identical generations: {identical} of {len(examples)}")
    print(f"speed-up (lm-eval time / tinystudent time): {theirs_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
