"""`ModelKind`: everything that differs between model kinds, behind one small interface.

lm-evaluation-harness reaches every backend through three methods; here every kind of model
(`causal`, `seq2seq`, `encoder`) is one subclass of `ModelKind`, and the rest of the package asks
the kind what it can do (capabilities) and lets it do the kind-specific part (methods), instead of
comparing kind names. Scoring, generation, training and bits per byte keep their shared loops
(batching, timing, losses) and call the kind for the step that differs.

An operation a kind cannot do raises a `ValueError` naming the kind; callers check the matching
capability first when they want a clearer message.
"""

from __future__ import annotations

from typing import Callable

import torch

from tinystudent.models.batches import ChoiceBatch, Features, TokenBatch
from tinystudent.models.requests import ChoiceRequest


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, 0 when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


class ModelKind:
    """One kind of model: its capabilities and the operations whose details depend on it.

    Kinds subclass this once and set the capabilities; operations a kind lacks keep the default
    that refuses them.

    Attributes:
        name: the kind's name, stored with results (`causal`, `seq2seq`, `encoder`).
        generates: it writes text (teachers, `serve`, debate, generative evaluation).
        next_token: it has a next-token distribution, so choices are scored as continuations
            (acc_norm applies) and token-level objectives work: answer tokens, rationales, logit
            and hidden-state distillation, bits per byte.
        decoder_only: prompt and text run through one decoder stack, so one pass gives every prompt
            token's log-probability (`serve`'s echo), a cut copy can be recovered on plain text and
            bits per byte measures what the model was trained for.
        prompt_special_tokens: a scoring or training prompt carries the tokenizer's special tokens.
        peft_task_type: PEFT's `TaskType` name for LoRA, or None.
        made_for_task: a model of this kind answers only the choices it was made with (a
            classifier's labels), so a student of it is first saved as it with the task's choices.
    """

    name: str = ""
    generates: bool = False
    next_token: bool = False
    decoder_only: bool = False
    prompt_special_tokens: bool = False
    peft_task_type: str | None = None
    made_for_task: bool = False

    def __repr__(self) -> str:
        return f"<{self.name} model kind>"

    def unsupported(self, what: str) -> ValueError:
        """The error for an operation this kind cannot do."""
        return ValueError(f"a {self.name} model cannot {what}")

    # --- loading and limits -------------------------------------------------------------------

    def recognises(self, config) -> bool:
        """Whether a transformers config describes a model of this kind (see `model_kind`). The
        kinds must not overlap: at most one recognises a config."""
        return False

    def auto_class(self):
        """The transformers Auto class that loads or builds a model of this kind."""
        raise NotImplementedError

    def input_limit(self, model, tokenizer) -> int:
        """The longest input, in tokens, the model takes."""
        raise NotImplementedError

    def position_limit(self, model) -> int | None:
        """The most positions a prompt and its generated text may take together; None: no limit."""
        return None

    def depth(self, config) -> int:
        """Layers of the stack whose hidden states are matched in patient KD."""
        return config.num_hidden_layers

    # --- prompts ------------------------------------------------------------------------------

    def adds_special_tokens(self, tokenizer, text: str) -> bool:
        """Whether a generation prompt gets the tokenizer's special tokens added."""
        return True

    def encode_prompt(self, tokenizer, text: str) -> list[int]:
        """Token ids of a generation prompt as a teacher or `serve` sends it."""
        return tokenizer.encode(text, add_special_tokens=self.adds_special_tokens(tokenizer, text))

    def encode_input(self, tokenizer, text: str) -> list[int]:
        """Token ids of a scoring or training prompt (see `prompt_special_tokens`)."""
        return tokenizer.encode(text, add_special_tokens=self.prompt_special_tokens)

    def choice_reserve(self, tokenizer, continuations: list[str]) -> int:
        """Tokens a choice-scoring prompt must leave free for its choices."""
        return 0

    # --- scoring choices ----------------------------------------------------------------------

    def encode_choices(self, tokenizer, request: ChoiceRequest, max_length: int | None = None):
        """One question's prompt and choices, tokenized as `score_encoded` takes them."""
        raise self.unsupported("score choices")

    def encoded_length(self, encoded) -> int:
        """Padded tokens one encoded question takes in a scoring batch."""
        context, continuations = encoded
        return len(context) + max(map(len, continuations))

    def encoded_group(self, encoded) -> int:
        """Questions scored in one batch must share this value."""
        return 0

    def score_encoded(self, model, tokenizer, batch: list, device: torch.device) -> list[list[float]]:
        """Each choice's score (a log-probability) for a batch of encoded questions."""
        raise self.unsupported("score choices")

    # --- generation ---------------------------------------------------------------------------

    def generation_inputs(self, prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input ids, attention mask, where the new tokens start in `generate`'s output rows)."""
        raise self.unsupported("generate text")

    # --- training -----------------------------------------------------------------------------

    def token_batch(self, pairs: list[tuple[list[int], list[int]]], pad_id: int, pack: bool = False) -> TokenBatch:
        """(prompt, target) token pairs as one training batch."""
        raise self.unsupported("train on token targets (it has no next-token distribution)")

    def choice_batch(
        self, items: list[Features], choice_mask: torch.Tensor, pad_id: int, tokenizer, max_length: int
    ) -> ChoiceBatch:
        """Every choice of every question, for the student's distribution over choices."""
        raise NotImplementedError

    def token_rows(self, core, batch: TokenBatch, layers: list[int]):
        """(rows, target ids, hidden states at `layers`) of a token batch: one row per target
        token, a final hidden state or already a logit row (see `output_head`)."""
        raise self.unsupported("train on token targets (it has no next-token distribution)")

    def output_head(self, core) -> Callable[[torch.Tensor], torch.Tensor]:
        """What turns `token_rows`' rows into logits."""
        raise self.unsupported("train on token targets (it has no next-token distribution)")

    def linear_head(self, core) -> torch.nn.Linear | None:
        """The output layer when `output_head` is exactly it, so its loss can be fused."""
        return None

    def check_output_layer(self, core, name: str) -> None:
        """Refuse a model whose training forward would not compute what it computes."""

    def choice_scores(self, core, batch: ChoiceBatch, chunk_tokens: int):
        """([questions, max choices] scores, PAD_SCORE on padding; the gold continuations'
        token log-probabilities, or None)."""
        raise NotImplementedError

    def check_training_task(self, model, examples: list) -> None:
        """Refuse training questions this model cannot learn (a classifier's labels must be their
        choices); every kind but the classifier learns any task."""

    def lora_modules_to_save(self, model) -> list[str] | None:
        """Modules LoRA trains in full and saves (a freshly initialised head)."""
        return None

    # --- modelling text (bits per byte) -------------------------------------------------------

    def text_start_token(self, model) -> int | None:
        """The token a text's first token is predicted from, when the model says (else BOS/EOS)."""
        return None

    def text_logits(self, model, tokenizer, rows: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits at the last `keep` positions of token rows read as plain text."""
        raise self.unsupported("model text left to right")
