"""The `seq2seq` kind: encoder-decoder language models (T5, FLAN-T5, BART).

The encoder reads the prompt with its special tokens (T5's EOS); the decoder writes or scores
the continuation from its start token. So:
- a question's prompt is encoded once and the decoder scores every choice on top of it;
- generation right-pads the encoder inputs and the new tokens follow the decoder's start token;
- training rows are decoder logits at the label positions (no separate output layer to chunk);
- bits per byte reads the text as an unconditional decoder: the encoder gets an empty text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinystudent.models.batches import ChoiceBatch, TokenBatch, continuation_pairs, pad_right, pad_rows, required
from tinystudent.models.heads import choice_table
from tinystudent.models.kinds.base import ModelKind, pad_token_id
from tinystudent.models.limits import DEFAULT_INPUT_LIMIT, tokenizer_limit
from tinystudent.models.requests import scores_by_question


def identity(rows: torch.Tensor) -> torch.Tensor:
    """The decoder's rows are logits already."""
    return rows


class Seq2SeqKind(ModelKind):
    """Encoder-decoder language models."""

    name = "seq2seq"
    generates = True
    next_token = True
    prompt_special_tokens = True
    peft_task_type = "SEQ_2_SEQ_LM"

    def recognises(self, config) -> bool:
        return bool(getattr(config, "is_encoder_decoder", False))

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def input_limit(self, model, tokenizer) -> int:
        # T5 has relative positions and no hard limit; it was trained on inputs of 512 tokens.
        return tokenizer_limit(tokenizer) or DEFAULT_INPUT_LIMIT

    def depth(self, config) -> int:
        return getattr(config, "num_decoder_layers", None) or config.decoder_layers

    def encode_choices(self, tokenizer, request, max_length: int | None = None):
        return (
            tokenizer.encode(request.context),
            [tokenizer.encode(c, add_special_tokens=False) for c in request.continuations],
        )

    @torch.no_grad()
    def score_encoded(self, model, tokenizer, batch: list, device: torch.device) -> list[list[float]]:
        """The encoder reads each prompt once; the decoder scores every choice on top of it."""
        prompts = [ctx for ctx, _ in batch]
        enc_ids, enc_mask = pad_rows(prompts, pad_token_id(tokenizer))
        enc_ids, enc_mask = enc_ids.to(device), enc_mask.to(device)
        encoder_out = model.get_encoder()(input_ids=enc_ids, attention_mask=enc_mask)
        owner = [i for i, (_, conts) in enumerate(batch) for _ in conts]
        conts = [c for _, cs in batch for c in cs]
        index = torch.tensor(owner, device=device)
        labels, _ = pad_rows(conts, -100)
        labels = labels.to(device)
        encoder_out.last_hidden_state = encoder_out.last_hidden_state[index]
        out = model(encoder_outputs=encoder_out, attention_mask=enc_mask[index], labels=labels)
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        safe = labels.clamp(min=0)
        token_lp = logprobs.gather(-1, safe[..., None]).squeeze(-1) * (labels != -100)
        return scores_by_question(batch, token_lp.sum(-1).tolist())

    def generation_inputs(self, prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        ids, mask = pad_rows(prompt_ids, pad_id, "right")
        return ids, mask, 1  # the decoder starts from one start token

    def token_batch(self, pairs: list[tuple[list[int], list[int]]], pad_id: int, pack: bool = False) -> TokenBatch:
        """Prompts as encoder inputs, targets as decoder labels (-100 on padding); never packed."""
        inputs = pad_right([p for p, _ in pairs], pad_id)
        mask = pad_right([[1] * len(p) for p, _ in pairs], 0)
        return TokenBatch(inputs, mask, labels=pad_right([t for _, t in pairs], -100))

    def choice_batch(
        self, items: list, choice_mask: torch.Tensor, pad_id: int, tokenizer, max_length: int
    ) -> ChoiceBatch:
        """The encoder reads each prompt once; the decoder scores every choice on top of it."""
        question, choice, gold, pairs = continuation_pairs(items)
        empty = torch.zeros(len(pairs), 0, dtype=torch.long)
        sequences = TokenBatch(empty, empty, labels=pad_right([t for _, t in pairs], -100))
        prompts = TokenBatch(
            pad_right([f.prompt for f in items], pad_id), pad_right([[1] * len(f.prompt) for f in items], 0)
        )
        return ChoiceBatch(choice_mask, question, choice, gold, sequences, prompts)

    def token_rows(self, core, batch: TokenBatch, layers: list[int]):
        labels = required(batch.labels, "labels")
        out = core(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=core.prepare_decoder_input_ids_from_labels(labels=labels),
            use_cache=False,
            output_hidden_states=bool(layers),
        )
        mask = labels != -100
        states = [out.decoder_hidden_states[i][mask] for i in layers]
        return out.logits[mask], labels[mask], states

    def output_head(self, core):
        return identity

    def choice_scores(self, core, batch: ChoiceBatch, chunk_tokens: int):
        prompts, question = required(batch.prompts, "prompts"), required(batch.question, "question")
        encoded = core.get_encoder()(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask)
        hidden = encoded.last_hidden_state[question]
        labels = required(required(batch.sequences, "sequences").labels, "labels")
        out = core(
            encoder_outputs=(hidden,),
            attention_mask=prompts.attention_mask[question],
            decoder_input_ids=core.prepare_decoder_input_ids_from_labels(labels=labels),
            use_cache=False,
        )
        mask = labels != -100
        logprobs = F.log_softmax(out.logits[mask].float(), dim=-1).gather(-1, labels[mask][:, None]).squeeze(-1)
        return choice_table(batch, logprobs, mask.nonzero()[:, 0])

    def text_start_token(self, model) -> int | None:
        start = getattr(getattr(model, "config", None), "decoder_start_token_id", None)
        return None if start is None else int(start)

    def text_logits(self, model, tokenizer, rows: torch.Tensor, keep: int) -> torch.Tensor:
        """The decoder predicts the text from nothing: the encoder reads an empty text (its EOS)."""
        empty = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        encoder_ids = torch.tensor([[empty]], dtype=torch.long, device=rows.device).expand(len(rows), -1)
        return model(input_ids=encoder_ids, decoder_input_ids=rows).logits[:, -keep:]


ADAPTER = Seq2SeqKind()
