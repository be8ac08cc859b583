"""A teacher running in this process: any causal or seq2seq model `load_model` can load."""

from __future__ import annotations

from typing import Iterator, Sequence

from tinystudent.evaluation.generative import generate_in_batches, render_prompt
from tinystudent.evaluation.scoring import score_choices
from tinystudent.models.generation import RowParams
from tinystudent.models.loading import LoadedModel
from tinystudent.models.packed_linears import packed_linears
from tinystudent.models.requests import ChoiceRequest
from tinystudent.teachers.base import (
    Generation,
    GenerationResult,
    GenerationSettings,
    ScoreResult,
    ScoringUnsupported,
    TeacherError,
)


class LocalTeacher:
    """Batched generation and choice scoring with a model loaded in this process.

    Generation takes the package's one path (`evaluation.generative.generate_in_batches`: batches
    of prompts sorted by length, the KV cache, per-row stopping and seeds), and a prompt that does
    not fit the model's context fails alone instead of breaking its batch.

    Args:
        loaded: the model, from `load_model`.
        batch_size: prompts per generation batch (default 8); scoring uses twice that.
        chat: wrap prompts in the tokenizer's chat template; default: when it has one.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, chat: bool | None = None):
        if not loaded.adapter.generates:
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
        self.max_positions = loaded.adapter.position_limit(loaded.model)
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
        loaded = self.loaded
        encoded = [loaded.adapter.encode_prompt(loaded.tokenizer, self.full_prompt(p)) for p in prompts]
        fitting = []
        for index, ids in enumerate(encoded):
            error = self._too_long(ids, settings)
            if error:
                yield index, error
            else:
                fitting.append(index)
        rows = [
            RowParams(settings.max_new_tokens, settings.temperature, settings.top_p, seeds[i], settings.stop)
            for i in fitting
        ]
        results = generate_in_batches(
            loaded.model,
            loaded.tokenizer,
            loaded.adapter,
            [encoded[i] for i in fitting],
            rows,
            self.batch_size,
            on_batch=self._count_calls,
        )
        for position, out in results:
            yield fitting[position], Generation(out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason)

    def _count_calls(self, prompts: int, seconds: float) -> None:
        self.calls += prompts

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> Iterator[tuple[int, ScoreResult]]:
        loaded = self.loaded
        if not loaded.adapter.next_token:
            raise ScoringUnsupported(f"{self.name} cannot score choices")
        size = self.batch_size * 2
        with packed_linears(loaded.model, loaded.device):  # once, not once per chunk
            for start in range(0, len(requests), size):
                batch = list(requests[start : start + size])
                self.calls += len(batch)
                scores = score_choices(loaded.model, loaded.tokenizer, loaded.adapter, batch, size, loaded.device)
                for offset, row in enumerate(scores):
                    yield start + offset, row

    def close(self) -> None:
        self.loaded = None  # type: ignore[assignment]
