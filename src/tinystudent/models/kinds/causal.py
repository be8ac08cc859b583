"""The `causal` kind: decoder-only language models (Llama, SmolLM2, GPT-2, Qwen, ...).

Prompt and continuation run through one stack, so:
- a question's choices are scored in its prompt's row, each behind a mask that lets it see the
  prompt and itself only (`score_encoded`), tokenized as lm-evaluation-harness does
  (`models.requests.encode_request`, no special tokens);
- generation left-pads its prompts, and a prompt gets a BOS token unless it starts with one;
- training rows are final hidden states at target positions, turned into logits a chunk at a
  time by the output layer (`models.heads.causal_head`), fused when it is a plain linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tinystudent.models.batches import (
    ChoiceBatch,
    TokenBatch,
    continuation_pairs,
    packed_token_batch,
    pad_right,
    pad_rows,
    required,
)
from tinystudent.models.heads import (
    causal_head,
    check_head,
    choice_table,
    plain_linear_head,
    target_logprobs,
    unwrap_peft,
)
from tinystudent.models.kinds.base import ModelKind, pad_token_id
from tinystudent.models.kinds.encoder import is_encoder_type
from tinystudent.models.limits import DEFAULT_INPUT_LIMIT, context_length, tokenizer_limit
from tinystudent.models.requests import encode_request, scores_by_question


class CausalKind(ModelKind):
    """Decoder-only language models."""

    name = "causal"
    generates = True
    next_token = True
    decoder_only = True
    prompt_special_tokens = False  # scoring prompts carry no BOS, as in lm-evaluation-harness
    peft_task_type = "CAUSAL_LM"

    def recognises(self, config) -> bool:
        """A decoder transformers can load with a causal-LM head, and not an encoder-only type."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        decoder = not getattr(config, "is_encoder_decoder", False) and not is_encoder_type(config)
        return decoder and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def input_limit(self, model, tokenizer) -> int:
        return context_length(model) or tokenizer_limit(tokenizer) or DEFAULT_INPUT_LIMIT

    def position_limit(self, model) -> int | None:
        return context_length(model)

    def adds_special_tokens(self, tokenizer, text: str) -> bool:
        # A chat template's output already starts with the BOS token: it is not added twice.
        bos = getattr(tokenizer, "bos_token", None)
        return not (bos and text.startswith(bos))

    def choice_reserve(self, tokenizer, continuations: list[str]) -> int:
        return max(len(tokenizer.encode(c, add_special_tokens=False)) for c in continuations)

    def encode_choices(self, tokenizer, request, max_length: int | None = None):
        return encode_request(tokenizer, request)

    def encoded_length(self, encoded) -> int:
        """A question's row: its prompt and every choice token but each choice's last."""
        context, continuations = encoded
        return len(context) + sum(len(tokens) - 1 for tokens in continuations)

    @torch.no_grad()
    def score_encoded(self, model, tokenizer, batch: list, device: torch.device) -> list[list[float]]:
        return _score_in_prompt_rows(model, pad_token_id(tokenizer), batch, device)

    def generation_inputs(self, prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids, mask = pad_rows(prompt_ids, pad_id, "left")
        return ids, mask, ids.shape[1]  # generate's rows hold the prompt, then the new tokens

    def token_batch(self, pairs: list[tuple[list[int], list[int]]], pad_id: int, pack: bool = False) -> TokenBatch:
        """Right-padded prompt + target sequences; with `pack`, several pairs share a row."""
        if pack:
            return packed_token_batch(pairs, pad_id)
        sequences = [p + t for p, t in pairs]
        ids = pad_right(sequences, pad_id)
        mask = pad_right([[1] * len(s) for s in sequences], 0)
        target_mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (prompt, target) in enumerate(pairs):
            target_mask[i, len(prompt) - 1 : len(prompt) + len(target) - 1] = True
        next_ids = torch.cat([ids[:, 1:], torch.full((len(pairs), 1), pad_id)], dim=1)
        return TokenBatch(ids, mask, target_mask, next_ids)

    def choice_batch(
        self, items: list, choice_mask: torch.Tensor, pad_id: int, tokenizer, max_length: int
    ) -> ChoiceBatch:
        """One prompt + choice sequence per (question, choice)."""
        question, choice, gold, pairs = continuation_pairs(items)
        return ChoiceBatch(choice_mask, question, choice, gold, self.token_batch(pairs, pad_id))

    def token_rows(self, core, batch: TokenBatch, layers: list[int]):
        out = core.base_model(**batch.causal_inputs(), use_cache=False, output_hidden_states=bool(layers))
        real = batch.attention_mask.bool()
        states = [out.hidden_states[i][real] for i in layers]
        target_mask, next_ids = required(batch.target_mask, "target_mask"), required(batch.next_ids, "next_ids")
        return out.last_hidden_state[target_mask], next_ids[target_mask], states

    def output_head(self, core):
        return causal_head(core)

    def linear_head(self, core) -> torch.nn.Linear | None:
        return plain_linear_head(core)

    def check_output_layer(self, core, name: str) -> None:
        check_head(core, name)

    def choice_scores(self, core, batch: ChoiceBatch, chunk_tokens: int):
        sequences = required(batch.sequences, "sequences")
        rows, targets, _ = self.token_rows(core, sequences, [])
        logprobs = target_logprobs(rows, targets, causal_head(core), chunk_tokens=chunk_tokens)
        return choice_table(batch, logprobs, required(sequences.target_mask, "target_mask").nonzero()[:, 0])

    def text_logits(self, model, tokenizer, rows: torch.Tensor, keep: int) -> torch.Tensor:
        try:  # only the positions that predict new tokens go through the output head
            return model(input_ids=rows, logits_to_keep=keep).logits
        except TypeError:  # a model class without `logits_to_keep`
            return model(input_ids=rows).logits[:, -keep:]


def _score_in_prompt_rows(
    model, pad_id: int, encoded: list[tuple[list[int], list[list[int]]]], device: torch.device
) -> list[list[float]]:
    """Each question is one row: its prompt, then the tokens of every choice that predict a later
    token of that choice. A choice's tokens see the prompt and the earlier tokens of the same
    choice only (a tree-shaped mask), and sit at the positions they would have right after the
    prompt, so each choice is scored exactly as if it ran alone on top of the prompt. The prompt
    runs once, nothing is padded per choice, and the output layer runs on scored positions only."""
    rows = [_prompt_row(context, continuations) for context, continuations in encoded]
    ids, real = pad_rows([row.ids for row in rows], pad_id)
    # Padding continues the count: positions that only ever step by one tell transformers the
    # row holds one sequence, so with no mask it takes the mask-free causal attention path.
    positions = torch.arange(ids.shape[1]).repeat(len(rows), 1)
    for i, row in enumerate(rows):
        positions[i, : len(row.ids)] = torch.tensor(row.positions)
    inputs = {"input_ids": ids.to(device), "position_ids": positions.to(device)}
    if any(row.branches for row in rows):  # one-token choices (yes/no) need the plain causal mask only
        inputs["attention_mask"] = _tree_masks(model.config, rows, real, positions, device)
    core: Any = unwrap_peft(model)  # a transformers model: `base_model` is its decoder stack
    hidden = core.base_model(**inputs, use_cache=False).last_hidden_state
    picks = torch.tensor([(i, at, token) for i, row in enumerate(rows) for at, token in row.scored], device=device)
    logprobs = torch.log_softmax(causal_head(core)(hidden[picks[:, 0], picks[:, 1]]).float(), dim=-1)
    chosen = logprobs[torch.arange(len(picks), device=device), picks[:, 2]].tolist()
    scores, k = [], 0
    for _, continuations in encoded:
        for tokens in continuations:
            scores.append(sum(chosen[k : k + len(tokens)]))
            k += len(tokens)
    return scores_by_question(encoded, scores)


@dataclass
class _PromptRow:
    """One question laid out for `_score_in_prompt_rows`.

    Attributes:
        ids, positions: the row's tokens and their position ids.
        branch_of: 0 for a prompt token, c for a token of choice c (1-based).
        scored: (position in the row, token it predicts) for every choice token, in choice order.
    """

    ids: list[int]
    positions: list[int]
    branch_of: list[int]
    scored: list[tuple[int, int]]

    @property
    def branches(self) -> bool:
        """Whether any choice token sits in the row (not so when every choice is one token)."""
        return any(self.branch_of)


def _prompt_row(context: list[int], continuations: list[list[int]]) -> _PromptRow:
    row = _PromptRow(list(context), list(range(len(context))), [0] * len(context), [])
    for branch, tokens in enumerate(continuations, start=1):
        predicted_at = len(context) - 1  # the prompt's last token predicts a choice's first
        for j, token in enumerate(tokens):
            row.scored.append((predicted_at, token))
            if j < len(tokens) - 1:  # a choice's last token predicts nothing that is scored
                predicted_at = len(row.ids)
                row.ids.append(token)
                row.positions.append(len(context) + j)
                row.branch_of.append(branch)
    return row


def _tree_masks(config, rows: list[_PromptRow], real: torch.Tensor, positions: torch.Tensor, device: torch.device):
    """(rows, 1, width, width) booleans, True where a query may attend to a key: earlier or same
    place in the row, and either a prompt token or a token of the query's own choice. A padding
    query attends to itself, so no softmax row is empty.

    Layers that attend through a sliding window (Mistral; some layers of Gemma 2/3 and Qwen) also
    drop keys a window or more positions back. When only some layers slide, the masks go by layer
    type, as transformers' mixed-attention models take them."""
    width = real.shape[1]
    branch = torch.full((len(rows), width), -1)
    for i, row in enumerate(rows):
        branch[i, : len(row.branch_of)] = torch.tensor(row.branch_of)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_branch = (branch[:, :, None] == branch[:, None, :]) | (branch[:, None, :] == 0)
    tree = (causal[None] & same_branch & real.bool()[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
    window = _sliding_window(config)
    if window is None:
        return tree[:, None].to(device)
    windowed = tree & ((positions[:, :, None] - positions[:, None, :]) < window)
    layer_types = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if layer_types == {"sliding_attention"}:
        return windowed[:, None].to(device)
    return {"full_attention": tree[:, None].to(device), "sliding_attention": windowed[:, None].to(device)}


def _sliding_window(config) -> int | None:
    """The window of the model's sliding-attention layers, or None when none slides."""
    window = getattr(config, "sliding_window", None)
    if not window or not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None)
    return window if layer_types is None or "sliding_attention" in layer_types else None


ADAPTER = CausalKind()
