"""The `encoder` kind: multiple-choice cross-encoders (BERT, MiniLM, RoBERTa, DeBERTa).

Each choice is the text pair (prompt, choice) and a classifier head scores the pairs of one
question against each other: the scores are a log-softmax over the choices, not token
log-probabilities. An encoder writes no text and has no next-token distribution, so it trains
on the choices only (the answer through them, choice-level distillation, mutual learning).
"""

from __future__ import annotations

import torch

from tinystudent.models.batches import ChoiceBatch, required
from tinystudent.models.heads import PAD_SCORE
from tinystudent.models.kinds.base import ModelKind
from tinystudent.models.limits import DEFAULT_INPUT_LIMIT, context_length, tokenizer_limit

ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "mpnet",
    "modernbert",
}


def is_encoder_type(config) -> bool:
    """An encoder-only architecture (some also have a causal-LM head in transformers, e.g. BERT)."""
    return not getattr(config, "is_encoder_decoder", False) and config.model_type in ENCODER_TYPES


class EncoderKind(ModelKind):
    """Multiple-choice cross-encoders."""

    name = "encoder"

    def recognises(self, config) -> bool:

        return is_encoder_type(config) and not is_classifier_config(config)

    def auto_class(self):
        from transformers import AutoModelForMultipleChoice

        return AutoModelForMultipleChoice

    def input_limit(self, model, tokenizer) -> int:
        # RoBERTa's 514 positions hold 512 tokens: the tokenizer's own limit is the smaller one.
        limits = (context_length(model), tokenizer_limit(tokenizer), DEFAULT_INPUT_LIMIT)
        return min(limit for limit in limits if limit)

    def choice_reserve(self, tokenizer, continuations: list[str]) -> int:
        """The longest choice text and the special tokens of a (prompt, choice) pair."""
        longest = max(len(tokenizer.encode(c.strip(), add_special_tokens=False)) for c in continuations)
        return longest + tokenizer.num_special_tokens_to_add(pair=True)

    def encode_choices(self, tokenizer, request, max_length: int | None = None):
        """One (prompt, choice text) pair per choice; anything past `max_length` is cut from the
        prompt's end as a last resort (prompts should already fit, see `evaluation.fit`)."""
        width = len(request.continuations)
        enc = tokenizer(
            [request.context] * width,
            [c.strip() for c in request.continuations],
            truncation="only_first",
            max_length=max_length,
        )
        return [{k: enc[k][c] for k in enc} for c in range(width)]

    def encoded_length(self, encoded) -> int:
        return max(len(pair["input_ids"]) for pair in encoded) * len(encoded)

    def encoded_group(self, encoded) -> int:
        return len(encoded)  # the multiple-choice head takes one number of choices per batch

    @torch.no_grad()
    def score_encoded(self, model, tokenizer, batch: list, device: torch.device) -> list[list[float]]:
        width = len(batch[0])
        enc = tokenizer.pad([pair for pairs in batch for pair in pairs], return_tensors="pt").to(device)
        enc = {k: v.view(len(batch), width, -1) for k, v in enc.items()}
        logits = model(**enc).logits.float()
        return torch.log_softmax(logits, dim=-1).tolist()

    def choice_batch(
        self, items: list, choice_mask: torch.Tensor, pad_id: int, tokenizer, max_length: int
    ) -> ChoiceBatch:
        """[questions, max choices, length] pairs, as `score_encoded` pairs them; padded choices
        are empty texts, masked out by `choice_mask`."""
        width = choice_mask.shape[1]
        contexts = [f.context for f in items for _ in range(width)]
        choices = [f.choice_texts[c] if c < len(f.choice_texts) else "" for f in items for c in range(width)]
        enc = tokenizer(
            contexts, choices, truncation="only_first", max_length=max_length, padding=True, return_tensors="pt"
        )
        tokens = {k: v.view(len(items), width, -1) for k, v in enc.items()}
        return ChoiceBatch(choice_mask, tokens=tokens)

    def choice_scores(self, core, batch: ChoiceBatch, chunk_tokens: int):
        logits = core(**required(batch.tokens, "tokens")).logits.float()
        return logits.masked_fill(~batch.choice_mask, PAD_SCORE), None

    def lora_modules_to_save(self, model) -> list[str] | None:
        # The multiple-choice classifier is freshly initialised: it trains in full.
        return ["classifier"] if hasattr(model, "classifier") else None


ADAPTER = EncoderKind()


def is_classifier_config(config) -> bool:
    """An encoder saved with a sequence-classification head (BertForSequenceClassification, ...)."""
    architectures = getattr(config, "architectures", None) or []
    return is_encoder_type(config) and any(a.endswith("ForSequenceClassification") for a in architectures)
