"""Language-modelling loss as bits per byte: comparable across tokenizers.

Du et al. 2024 ("Understanding Emergent Abilities of Language Models from the Loss Perspective",
arXiv 2403.15796) found that pre-training loss, not size, predicts downstream ability. A loss per
token depends on the tokenizer (a tokenizer with longer tokens has fewer, harder predictions), so
we report the total negative log-likelihood of a text in bits divided by the text's UTF-8 bytes,
as nanoGPT/nanochat do:

    bits_per_byte = sum over the text's tokens of -log2 p(token | context) / len(text.encode("utf-8"))

What is predicted. The text is tokenized without special tokens and a start token is put in front
of it (the tokenizer's BOS token, else its EOS token, as lm-evaluation-harness's rolling
log-likelihood does; `decoder_start_token_id` for encoder-decoders). Every one of the text's own
tokens is then predicted exactly once, the first one from the start token alone, so the tokens
scored and the bytes counted cover the same text. The start token itself is not scored.

Long texts. A model sees at most `window` tokens at once. The first window predicts its tokens
with whatever context precedes them inside it; every later window moves on by `stride` tokens and
predicts only those `stride` new tokens, so each of them has at least `window - stride` tokens of
context (default stride: half the window). The last window is aligned to the end of the text, so
every window but a short text's only one is exactly `window` tokens long.

Model kinds. Causal models are scored directly. Encoder-decoders (T5) are scored as an
unconditional decoder: the encoder reads an empty text (just its end-of-sequence token) and the
decoder predicts the text from `decoder_start_token_id`. That is a defined number, but a T5 was
pre-trained to fill in spans given its input, not to write text from nothing, so its bits per
byte says less about it than a causal model's does about a causal model; `model_kind` is recorded
with every result. Encoders (BERT) model no text left to right and are refused.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import torch

from tinystudent.evaluation.prompts import lettered_question
from tinystudent.models.kinds import ModelKind, kind_adapter
from tinystudent.tasks.schema import Example

LN2 = math.log(2.0)


@dataclass(frozen=True)
class TokenWindow:
    """One forward pass over `tokens[start:end]` that predicts `tokens[first_target:end]`.

    Positions index the token sequence with the start token at position 0.
    """

    start: int
    end: int
    first_target: int


def token_windows(n_positions: int, window: int, stride: int) -> list[TokenWindow]:
    """The windows that predict positions 1 .. n_positions - 1 of a sequence exactly once.

    Args:
        n_positions: length of the sequence, start token included (at least 2).
        window: tokens per forward pass (at least 2).
        stride: new tokens each window after the first predicts (1 .. window - 1).
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride < window:
        raise ValueError(
            f"stride must be between 1 and window - 1 = {window - 1}, got {stride} "
            "(later windows need at least one token of overlap as context)"
        )
    end = min(window, n_positions)
    windows = [TokenWindow(0, end, 1)]
    while end < n_positions:
        new_end = min(end + stride, n_positions)
        windows.append(TokenWindow(max(0, new_end - window), new_end, end))
        end = new_end
    return windows


def start_token_id(tokenizer, model=None, kind: str | ModelKind = "causal") -> int:
    """The token the text's first token is predicted from: BOS, else EOS (decoder start for T5)."""
    start = kind_adapter(kind).text_start_token(model)
    if start is not None:
        return start
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError(
        "the tokenizer has neither a BOS nor an EOS token, so the text's first token "
        "cannot be predicted; set tokenizer.bos_token before measuring bits per byte"
    )


def _encode(tokenizer, text: str) -> list[int]:
    # verbose=False: a corpus is longer than the model's context on purpose; windows handle it.
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


@torch.no_grad()
def _window_nll_nats(model, tokenizer, adapter: ModelKind, tokens: torch.Tensor, windows: list[TokenWindow]) -> float:
    """Summed -ln p of the windows' targets; windows of equal length go through in one batch."""
    rows = torch.stack([tokens[w.start : w.end] for w in windows])
    n_new = [w.end - w.first_target for w in windows]
    keep = max(n_new) + 1  # logits at the last position predict past the window: dropped
    logits = adapter.text_logits(model, tokenizer, rows, keep)[:, :-1].float()
    targets = rows[:, -(keep - 1) :]
    # log p = logit - logsumexp(logits): avoids a second [windows, tokens, vocab] tensor.
    picked = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    total = 0.0
    for i, n in enumerate(n_new):
        total -= picked[i, -n:].sum().item()
    return total


def bits_per_byte(
    model,
    tokenizer,
    text: str,
    window: int = 1024,
    stride: int | None = None,
    kind: str | ModelKind = "causal",
    batch_size: int = 2,
    resume_from: tuple[int, float] | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Total negative log-likelihood of `text` in bits over its UTF-8 bytes.

    Args:
        model: a causal language model (or an encoder-decoder with `kind="seq2seq"`), in eval mode.
        tokenizer: its tokenizer.
        text: the text to score (non-empty).
        window: tokens per forward pass, start token included [1024]; lowered to the model's
            maximum positions when that is smaller.
        stride: new tokens each later window predicts [window // 2]; each has at least
            `window - stride` tokens of context.
        kind: `causal` or `seq2seq` (a kind with a next-token distribution), or its `ModelKind`.
        batch_size: windows per forward pass [2]; the logits of a batch take
            batch_size x window x vocabulary floats, so keep it small on a large vocabulary.
        resume_from: (windows done, their summed NLL in nats) from an earlier, interrupted
            measurement of the same model, text and settings: those windows are not run again.
        on_progress: called after each batch with (windows done, windows in all, NLL in nats so
            far): for a progress bar, and to save what `resume_from` needs.

    Returns:
        {bits_per_byte, nll_bits, bits_per_token, bytes, tokens, windows, window, stride,
        start_token, lossless, model_kind}: `tokens` is the number of tokens predicted (all of
        the text's), `lossless` whether decoding the tokens gives back the text exactly (an
        unknown-token tokenizer loses bytes, and then the number flatters the model).
    """
    adapter = kind_adapter(kind)
    if not adapter.next_token:
        raise ValueError(
            f"bits per byte needs a causal or seq2seq language model, got a {adapter.name} "
            "model (it does not model text left to right)"
        )
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("bits per byte of an empty text is undefined: give a non-empty corpus")
    limit = adapter.position_limit(model)
    window = min(window, limit) if limit else window
    stride = window // 2 if stride is None else stride
    ids = _encode(tokenizer, text)
    start = start_token_id(tokenizer, model, adapter)
    device = next(model.parameters()).device
    tokens = torch.tensor([start] + ids, dtype=torch.long, device=device)
    windows = token_windows(len(tokens), window, stride)
    done, nll_nats = resume_from or (0, 0.0)
    if not 0 <= done <= len(windows):
        raise ValueError(f"cannot resume after window {done}: this text has {len(windows)} windows")
    # Batches are taken from window `done` on, so a resumed run adds the same terms in the same
    # order as an uninterrupted one with the same batch size.
    for first in range(done, len(windows), batch_size):
        group = windows[first : first + batch_size]
        for same in _group_alike(group):
            nll_nats += _window_nll_nats(model, tokenizer, adapter, tokens, same)
        if on_progress:
            on_progress(first + len(group), len(windows), nll_nats)
    nll_bits = nll_nats / LN2
    return {
        "bits_per_byte": nll_bits / n_bytes,
        "nll_bits": nll_bits,
        "bits_per_token": nll_bits / len(ids) if ids else float("nan"),
        "bytes": n_bytes,
        "tokens": len(ids),
        "windows": len(windows),
        "window": window,
        "stride": stride,
        "start_token": tokenizer.convert_ids_to_tokens(start),
        "lossless": tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text,
        "model_kind": adapter.name,
    }


def _group_alike(windows: list[TokenWindow]) -> list[list[TokenWindow]]:
    """Windows of the same length predicting the same number of tokens, batched together.

    The first window predicts nearly all of its tokens and later ones only `stride`, so keeping
    them apart stops the first one from making every window in its batch keep all its logits.
    """
    groups: dict[tuple[int, int], list[TokenWindow]] = {}
    for w in windows:
        groups.setdefault((w.end - w.start, w.end - w.first_target), []).append(w)
    return list(groups.values())


# --- corpora -------------------------------------------------------------------------------------


def task_corpus(examples: list[Example], rationales: dict[str, list[str]] | None = None) -> str:
    """The reference text of a task: each question with its lettered choices, then rationales.

    Args:
        examples: the questions (usually the training split).
        rationales: example id -> rationale texts (from teachers, in a fixed teacher order);
            an example's own reference rationale (`Example.rationale`) is included too.

    Examples are separated by a blank line. The gold answer is not written out: the text is
    what a student reads about the task, not the answer key.
    """
    blocks = []
    for ex in examples:
        parts = [lettered_question(ex)]
        if ex.rationale:
            parts.append(ex.rationale.strip())
        parts += [r.strip() for r in (rationales or {}).get(ex.id, []) if r and r.strip()]
        blocks.append("\n".join(parts))
    return "\n\n".join(blocks) + "\n"


def truncate_utf8(text: str, max_bytes: int | None) -> str:
    """The longest prefix of `text` that is at most `max_bytes` UTF-8 bytes (whole characters)."""
    if max_bytes is None:
        return text
    if max_bytes < 1:
        raise ValueError(f"--max-bytes must be at least 1, got {max_bytes}")
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def text_sha256(text: str) -> str:
    """SHA-256 of the text's UTF-8 bytes, in hex: the corpus's identity."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_bits_per_byte(
    loaded,
    text: str,
    corpus: str,
    store,
    *,
    window: int = 1024,
    stride: int | None = None,
    batch_size: int = 2,
    recompute: bool = False,
    on_progress: Callable[[int, int, float], None] | None = None,
    save_every_s: float = 30.0,
) -> dict:
    """Bits per byte of a loaded model on a corpus, stored once and reused, resumable.

    Args:
        loaded: a `LoadedModel`.
        text: the corpus text (already truncated if wanted).
        corpus: a name for the corpus (a file path, `task:arc_easy/train`, ...).
        store: an open `tinystudent.store.Store`; a row with the same model identity, corpus
            hash, window, stride and dtype is returned instead of measuring again.
        window, stride, batch_size: as for `bits_per_byte`.
        recompute: measure even when a stored row exists (and store the new one).
        on_progress: as for `bits_per_byte`.
        save_every_s: how often the running sum is saved [30 s]; a killed measurement resumes
            from the last save (same device and batch size, so the sum is the same).
    """
    import json
    import time

    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    key = {
        "model_identity": loaded.resolved.identity,
        "corpus_sha256": text_sha256(text),
        "window": window,
        "stride": stride if stride is not None else -1,
        "dtype": dtype,
    }
    found = [] if recompute else store.model_losses(**key)
    if found:  # the same text under whatever name it was first measured: report today's name
        return {**_flat_loss_row(found[-1], cached=True), "corpus": corpus}
    progress_key = json.dumps({**key, "batch_size": batch_size, "device": str(loaded.device)}, sort_keys=True)
    last_save = [time.monotonic()]

    def progress(done: int, total: int, nll_nats: float) -> None:
        if time.monotonic() - last_save[0] >= save_every_s:
            store.save_loss_progress(progress_key, done, total, nll_nats)
            last_save[0] = time.monotonic()
        if on_progress:
            on_progress(done, total, nll_nats)

    measured = bits_per_byte(
        loaded.model,
        loaded.tokenizer,
        text,
        window,
        stride,
        loaded.kind,
        batch_size,
        resume_from=store.loss_progress(progress_key),
        on_progress=progress,
    )
    extra = ("bits_per_token", "windows", "start_token", "lossless", "model_kind")
    row = {
        "model": loaded.name,
        "corpus": corpus,
        **key,
        **{k: measured[k] for k in ("bytes", "tokens", "nll_bits", "bits_per_byte")},
        "settings": {
            **{k: measured[k] for k in extra},
            "window_used": measured["window"],
            "stride_used": measured["stride"],
            "batch_size": batch_size,
            "device": str(loaded.device),
            "model_source": loaded.resolved.source,
        },
    }
    loss_id = store.save_model_loss(row, done_progress_key=progress_key)
    return _flat_loss_row(store.model_loss(loss_id), cached=False)


def _flat_loss_row(row: dict, cached: bool) -> dict:
    """A stored `model_losses` row as one flat dict (settings merged in, versions dropped)."""
    flat = {k: v for k, v in row.items() if k not in ("settings", "versions")}
    flat.update(row.get("settings") or {})
    flat["loss_id"] = flat.pop("id")
    flat["cached"] = cached
    return flat
