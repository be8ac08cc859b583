"""Compare a tinystudent evaluation with lm-evaluation-harness's samples, question by question.

    python scripts/compare_lm_eval.py SAMPLES.jsonl --db results.sqlite --evaluation 1

SAMPLES.jsonl is what `lm_eval ... --log_samples --output_path DIR` writes. Prints both
accuracies, how many questions get the same acc / acc_norm prediction, and the largest
difference between the two log-likelihoods of any choice.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tinystudent.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("--db", required=True)
    parser.add_argument("--evaluation", type=int, required=True)
    args = parser.parse_args()

    theirs = [json.loads(line) for line in open(args.samples)]
    with Store(args.db) as store:
        ours = store.predictions(args.evaluation)
    if len(theirs) != len(ours):
        raise SystemExit(f"{len(theirs)} lm-eval samples but {len(ours)} tinystudent predictions")
    same_acc = same_norm = 0
    max_diff = 0.0
    acc_theirs, norm_theirs = [], []
    for sample, pred in zip(sorted(theirs, key=lambda s: s["doc_id"]), ours):
        loglik = [float(r[0]) for r in sample["filtered_resps"]]
        lengths = [len(c) for c in sample["doc"]["choices"]["text"]]
        their_pred = int(np.argmax(loglik))
        their_norm = int(np.argmax(np.array(loglik) / np.array(lengths)))
        same_acc += their_pred == pred["pred"]
        same_norm += their_norm == pred["pred_norm"]
        max_diff = max(max_diff, *(abs(a - b) for a, b in zip(loglik, json.loads(pred["choice_logprobs"]))))
        acc_theirs.append(sample["acc"])
        norm_theirs.append(sample["acc_norm"])
    ours_acc = np.mean([p["correct"] for p in ours])
    ours_norm = np.mean([p["pred_norm"] == p["gold"] for p in ours])
    print(f"questions: {len(ours)}")
    print(
        f"acc      lm-eval {np.mean(acc_theirs):.4f}  tinystudent {ours_acc:.4f}  same prediction {same_acc}/{len(ours)}"
    )
    print(
        f"acc_norm lm-eval {np.mean(norm_theirs):.4f}  tinystudent {ours_norm:.4f}  same prediction {same_norm}/{len(ours)}"
    )
    print(f"largest |log-likelihood difference| over all choices: {max_diff:.2e}")


if __name__ == "__main__":
    main()
