"""A teacher running in this process: any causal or seq2seq model `load_model` can load."""

from __future__ import annotations

from typing import Iterator, Sequence

from tinystudent.evaluation.generative import render_prompt
from tinystudent.evaluation.scoring import ChoiceRequest, score_choices
from tinystudent.models.loading import LoadedModel, context_length
from tinystudent.teachers.base import (
    GenerationResult,
    GenerationSettings,
    ScoreResult,
    ScoringUnsupported,
    TeacherError,
)
from tinystudent.teachers.engine import RowParams, encode_prompt, generate_rows


class LocalTeacher:
    """Batched generation and choice scoring with a model loaded in this process.

    Prompts are sorted by length before batching (less padding), generation uses the KV cache, and
    a prompt that does not fit the model's context fails alone instead of breaking its batch.

    Args:
        loaded: the model, from `load_model`.
        batch_size: prompts per generation batch (default 8); scoring uses twice that.
        chat: wrap prompts in the tokenizer's chat template; default: when it has one.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, chat: bool | None = None):
        if loaded.kind not in ("causal", "seq2seq"):
            raise ValueError(
                f"{loaded.name} is an {loaded.kind} model: a teacher must generate text "
                "(a causal or seq2seq language model)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
        if chat and not has_template:
            raise ValueError(f"{loaded.name} has no chat template; use chat=False")
        self.loaded = loaded
        self.name = loaded.name
        self.identity = loaded.resolved.identity
        self.batch_size = batch_size
        self.chat = has_template if chat is None else chat
        self.calls = 0
        self.max_positions = context_length(loaded.model) if loaded.kind == "causal" else None
        self.tokenizer = loaded.tokenizer
        self.input_limit = loaded.input_limit

    def full_prompt(self, prompt: str) -> str:
        return render_prompt(self.loaded.tokenizer, prompt) if self.chat else prompt

    def cache_fields(self) -> dict:
        return {"backend": "local", "kind": self.loaded.kind, "chat": self.chat}

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer.encode(text, add_special_tokens=False))

    def _too_long(self, ids: list[int], settings: GenerationSettings) -> TeacherError | None:
        if self.max_positions and len(ids) + settings.max_new_tokens > self.max_positions:
            return TeacherError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is {settings.max_new_tokens}, "
                f"more than {self.name}'s context of {self.max_positions} tokens (use fewer shots "
                "or a smaller max_new_tokens)"
            )
        return None

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, seeds: Sequence[int]
    ) -> Iterator[tuple[int, GenerationResult]]:
        tokenizer, kind = self.loaded.tokenizer, self.loaded.kind
        encoded = [encode_prompt(tokenizer, kind, self.full_prompt(p)) for p in prompts]
        fitting = []
        for index, ids in enumerate(encoded):
            error = self._too_long(ids, settings)
            if error:
                yield index, error
            else:
                fitting.append(index)
        fitting.sort(key=lambda i: len(encoded[i]))
        for start in range(0, len(fitting), self.batch_size):
            batch = fitting[start : start + self.batch_size]
            rows = [
                RowParams(settings.max_new_tokens, settings.temperature, settings.top_p, seeds[i], settings.stop)
                for i in batch
            ]
            self.calls += len(batch)
            results = generate_rows(self.loaded.model, tokenizer, kind, [encoded[i] for i in batch], rows)
            for index, (generation, _) in zip(batch, results):
                yield index, generation

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> Iterator[tuple[int, ScoreResult]]:
        loaded = self.loaded
        if loaded.kind not in ("causal", "seq2seq"):
            raise ScoringUnsupported(f"{self.name} cannot score choices")
        size = self.batch_size * 2
        for start in range(0, len(requests), size):
            batch = list(requests[start : start + size])
            self.calls += len(batch)
            scores = score_choices(loaded.model, loaded.tokenizer, loaded.kind, batch, size, loaded.device)
            for offset, row in enumerate(scores):
                yield start + offset, row

    def close(self) -> None:
        self.loaded = None  # type: ignore[assignment]
