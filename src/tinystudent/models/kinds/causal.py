"""The `causal` kind: decoder-only language models (Llama, SmolLM2, GPT-2, Qwen, ...).

Prompt and continuation run through one stack, so:
- a choice is scored on top of its prompt's key/value cache (`score_encoded`), tokenized as
  lm-evaluation-harness does (`evaluation.scoring.encode_request`, no special tokens);
- generation left-pads its prompts, and a prompt gets a BOS token unless it starts with one;
- training rows are final hidden states at target positions, turned into logits a chunk at a
  time by the output layer (`distill.objectives.causal_head`), fused when it is a plain linear.
"""

from __future__ import annotations

import torch

from tinystudent.distill.data import (
    ChoiceBatch,
    TokenBatch,
    continuation_pairs,
    packed_token_batch,
    pad_right,
    required,
)
from tinystudent.distill.losses import chunked_token_losses
from tinystudent.distill.objectives import causal_head, check_head, choice_table, plain_linear_head
from tinystudent.evaluation.scoring import cache_kwarg, encode_request, pad_rows, scores_by_question
from tinystudent.models.kinds.base import ModelKind, pad_token_id
from tinystudent.models.kinds.encoder import is_encoder_type
from tinystudent.models.loading import DEFAULT_INPUT_LIMIT, context_length, tokenizer_limit


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

    @torch.no_grad()
    def score_encoded(self, model, tokenizer, batch: list, device: torch.device) -> list[list[float]]:
        return _score_on_prompt_cache(model, pad_token_id(tokenizer), batch, device)

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
        logprobs, _ = chunked_token_losses(rows, targets, causal_head(core), chunk_tokens=chunk_tokens)
        return choice_table(batch, logprobs, required(sequences.target_mask, "target_mask").nonzero()[:, 0])

    def text_logits(self, model, tokenizer, rows: torch.Tensor, keep: int) -> torch.Tensor:
        try:  # only the positions that predict new tokens go through the output head
            return model(input_ids=rows, logits_to_keep=keep).logits
        except TypeError:  # a model class without `logits_to_keep`
            return model(input_ids=rows).logits[:, -keep:]


def _score_on_prompt_cache(
    model, pad_id: int, encoded: list[tuple[list[int], list[list[int]]]], device: torch.device
) -> list[list[float]]:
    """Each question's prompt runs once; its key/value cache is repeated for each of its choices
    and only the choices' tokens run on top of it."""
    from transformers import DynamicCache

    prompts = [ctx for ctx, _ in encoded]
    # Right padding and no attention mask: in a causal model a real token never attends to the
    # padding after it, so the prompt pass takes the fast, mask-free causal attention path.
    prompt_ids, prompt_mask = pad_rows(prompts, pad_id, "right")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    lengths = prompt_mask.sum(-1)
    last = lengths - 1
    kept = torch.unique(last)  # logits only at each row's last prompt position (sorted batches: few)
    cache = DynamicCache(config=model.config)
    cache_arg = cache_kwarg(model)
    out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=kept, **{cache_arg: cache})
    row_logits = out.logits[torch.arange(len(prompts), device=device), torch.searchsorted(kept, last)]
    first_logprobs = torch.log_softmax(row_logits.float(), dim=-1)  # predicts each 1st choice token

    owner = [i for i, (_, conts) in enumerate(encoded) for _ in conts]
    conts = [c for _, cs in encoded for c in cs]
    scores = [first_logprobs[owner[n], tokens[0]].item() for n, tokens in enumerate(conts)]
    longer = [n for n, tokens in enumerate(conts) if len(tokens) > 1]
    if longer:  # one-token choices (yes/no) are scored by the prompt's pass alone
        # Tokens 1.. of a choice are predicted by its tokens 0..-2 run on top of the prompt's cache;
        # the choice's last token is never fed, its prediction is not needed.
        index = torch.tensor([owner[n] for n in longer], device=device)
        cache.batch_select_indices(index)  # filled in place by the prompt's forward
        cont_ids, cont_mask = pad_rows([conts[n][:-1] for n in longer], pad_id)
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        start = lengths[index]
        cont_positions = start[:, None] + torch.arange(cont_ids.shape[1], device=device)[None]
        mask = torch.cat([prompt_mask[index], cont_mask], dim=-1)
        logits = model(
            input_ids=cont_ids, attention_mask=mask, position_ids=cont_positions, use_cache=True, **{cache_arg: cache}
        ).logits.float()
        logsumexp = torch.logsumexp(logits, dim=-1)
        for row, n in enumerate(longer):
            tail = torch.tensor(conts[n][1:], device=device)
            steps = torch.arange(len(tail), device=device)
            scores[n] += (logits[row, steps, tail] - logsumexp[row, steps]).sum().item()
    return scores_by_question(encoded, scores)


ADAPTER = CausalKind()
