"""The `classifier` kind: an encoder with one output per label, for tasks whose questions all
offer the same choices (yes/no, yes/no/maybe).

A cross-encoder (the `encoder` kind) reads a question's evidence once per choice, as the pair
(prompt, choice). When every question offers the same choices, the choices are labels: a
classifier reads the prompt once and scores every label at the same time (BERT's sequence
classification head, as BioBERT answers BioASQ's yes/no questions), so a yes/no question costs one
pass instead of two, in training and in evaluation. Its labels are the task's choices, kept in
the model's config (`id2label`); a student becomes a classifier when it is saved as one
(`models.students.scale_down` with `kind="classifier"` and the task's `labels`). Like an encoder
it writes no text and learns from the choices only.
"""

from __future__ import annotations

import torch

from tinystudent.models.batches import ChoiceBatch, required
from tinystudent.models.heads import PAD_SCORE
from tinystudent.models.kinds.encoder import EncoderKind, is_classifier_config


def label_ids(config, continuations: list[str]) -> list[int]:
    """The label index of each choice (its text without the leading space); a choice that is not
    one of the classifier's labels is an error naming them."""
    known = {str(label).strip(): int(index) for index, label in config.id2label.items()}
    wanted = [c.strip() for c in continuations]
    missing = [c for c in wanted if c not in known]
    if missing:
        raise ValueError(
            f"choices {missing} are not labels of this classifier (its labels: {sorted(known)}); a "
            "classifier answers only the choices it was made with: use the encoder kind for other tasks"
        )
    return [known[c] for c in wanted]


class ClassifierKind(EncoderKind):
    """Encoders with a label head: one pass per question, whatever the number of choices."""

    name = "classifier"
    made_for_task = True

    def recognises(self, config) -> bool:
        return is_classifier_config(config)

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def choice_reserve(self, tokenizer, continuations: list[str]) -> int:
        """The prompt is read alone: only its special tokens."""
        return tokenizer.num_special_tokens_to_add(pair=False)

    def encode_choices(self, tokenizer, request, max_length: int | None = None):
        """The prompt's tokens (cut at its end past `max_length` as a last resort: prompts should
        already fit, see `evaluation.fit`) and the choices' texts."""
        enc = tokenizer(request.context, truncation=max_length is not None, max_length=max_length)
        return {k: enc[k] for k in enc}, list(request.continuations)

    def encoded_length(self, encoded) -> int:
        return len(encoded[0]["input_ids"])

    def encoded_group(self, encoded) -> int:
        return 0  # every question is one row, whatever its number of choices

    @torch.no_grad()
    def score_encoded(self, model, tokenizer, batch: list, device: torch.device) -> list[list[float]]:
        enc = tokenizer.pad([inputs for inputs, _ in batch], return_tensors="pt").to(device)
        logprobs = torch.log_softmax(model(**enc).logits.float(), dim=-1)
        rows = []
        for row, (_, continuations) in zip(logprobs, batch):
            ids = label_ids(model.config, continuations)
            rows.append(torch.log_softmax(row[ids], dim=-1).tolist())  # over this question's choices
        return rows

    def check_training_task(self, model, examples: list) -> None:
        """Training reads the gold answer's index as the label's: every question must offer the
        classifier's labels, in their order."""
        labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
        for ex in examples:
            if tuple(str(c).strip() for c in ex.choices) != labels:
                raise ValueError(
                    f"question {ex.id!r} offers the choices {list(ex.choices)}, but this classifier's labels are "
                    f"{list(labels)}: a classifier learns a task whose questions all offer its labels, in that "
                    "order (make it for this task, or use the encoder kind)"
                )

    def choice_batch(
        self, items: list, choice_mask: torch.Tensor, pad_id: int, tokenizer, max_length: int
    ) -> ChoiceBatch:
        """[questions, length] prompts; choice c is label c (`check_training_task`)."""
        enc = tokenizer(
            [f.context for f in items], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        return ChoiceBatch(choice_mask, tokens=dict(enc))

    def choice_scores(self, core, batch: ChoiceBatch, chunk_tokens: int):
        logits = core(**required(batch.tokens, "tokens")).logits.float()[:, : batch.choice_mask.shape[1]]
        return logits.masked_fill(~batch.choice_mask, PAD_SCORE), None


ADAPTER = ClassifierKind()
