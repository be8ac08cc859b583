"""Prompt-token log-probabilities of a decoder-only model: the server's `echo` + `logprobs` answer.

`token_logprobs` runs token sequences through a model once and returns each token's
log-probability given the tokens before it. Generation lives in `models.generation` and
`evaluation.generative.generate_in_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Tokens per forward pass when scoring prompts: bounds the [tokens, vocabulary] logits tensor
# (4096 x 49152 float32 = 800 MB for SmolLM2's vocabulary).
SCORE_TOKEN_BUDGET = 4096


@dataclass
class TokenLogprobs:
    """Log-probabilities of a token sequence under a decoder-only model.

    Attributes:
        logprobs: per token, log P(token | tokens before it); None for the first token.
        top: per token, the `top_n` most likely tokens at that position ({id: logprob}), or None.
        next_logprobs: the distribution after the last token (to pick one more token).
    """

    logprobs: list[float | None]
    top: list[dict[int, float] | None]
    next_logprobs: torch.Tensor


def _score_chunks(rows: list[list[int]], budget: int):
    """Group rows so that rows x longest row stays within the token budget."""
    chunk: list[int] = []
    for index in sorted(range(len(rows)), key=lambda i: len(rows[i])):
        longest = max([len(rows[j]) for j in chunk] + [len(rows[index])])
        if chunk and longest * (len(chunk) + 1) > budget:
            yield chunk
            chunk = []
        chunk.append(index)
    if chunk:
        yield chunk


@torch.no_grad()
def token_logprobs(
    model, pad_id: int, rows: list[list[int]], top_n: int = 0, budget: int = SCORE_TOKEN_BUDGET
) -> list[TokenLogprobs]:
    """Each token's log-probability given the tokens before it, for every row (decoder-only
    models: `ModelKind.decoder_only`).

    Rows are right-padded (so positions need no adjustment) and batched by a token budget.
    """
    device = next(model.parameters()).device
    results: list[TokenLogprobs | None] = [None] * len(rows)
    for chunk in _score_chunks(rows, budget):
        width = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for n, i in enumerate(chunk):
            ids[n, : len(rows[i])] = torch.tensor(rows[i])
            mask[n, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for n, i in enumerate(chunk):
            length = len(rows[i])
            logprobs = torch.log_softmax(logits[n, :length].float(), dim=-1)  # one row at a time
            targets = torch.tensor(rows[i][1:], device=device)
            picked = logprobs[torch.arange(length - 1, device=device), targets].tolist()
            top: list[dict[int, float] | None] = [None] * length
            if top_n:
                values, indices = logprobs[: length - 1].topk(top_n, dim=-1)
                for t in range(length - 1):
                    top[t + 1] = dict(zip(indices[t].tolist(), values[t].tolist()))
            results[i] = TokenLogprobs([None] + picked, top, logprobs[length - 1].cpu())
        del logits
    return results  # type: ignore[return-value]
