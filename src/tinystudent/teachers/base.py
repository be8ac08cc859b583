"""What every teacher backend provides, what it produces, and how it fails.

A backend is anything with the small `Teacher` protocol below: a local model (`LocalTeacher`) or
an OpenAI-compatible server (`HttpTeacher`). Backends only run prompts; prompts, the cache and
clean-up live in the rest of `teachers/`, so they are written once for every backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, Sequence, Union, runtime_checkable

from tinystudent.models.requests import ChoiceRequest
from tinystudent.redact import redact


class RedactedError(RuntimeError):
    """An error whose message never holds an API key (see `tinystudent.redact`): a teacher's
    errors quote what servers answered, and a server may echo the key back."""

    def __init__(self, message: str, *args):
        super().__init__(redact(message), *args)


class TeacherError(RedactedError):
    """One request failed for a reason retrying will not fix (a 4xx answer, malformed JSON, a
    prompt longer than the model's context). Other requests may still succeed."""


class TeacherUnavailable(RedactedError):
    """The teacher cannot be used at all right now (unreachable, timing out, overloaded after every
    retry, wrong URL, model name or key). A run stops; what it finished is already cached."""


class ScoringUnsupported(RedactedError):
    """The backend cannot return choice log-likelihoods (no `echo` + `logprobs` on the server)."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything besides the prompt that determines a generated text.

    Attributes:
        max_new_tokens: most tokens to generate (default 128).
        temperature: 0 for greedy decoding (default), above 0 to sample.
        top_p: nucleus sampling mass, used only when sampling (default 1.0).
        seed: base seed for sampling; each prompt gets its own seed derived from it and the
            prompt, so a sample does not depend on which other prompts share its batch.
        stop: strings that end the text (the stop string itself is not kept).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def cache_fields(self) -> dict:
        """The settings as they enter a cache key: greedy output does not depend on the seed or
        top_p, so they are left out then and changing them still hits the cache."""
        fields = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "stop": list(self.stop)}
        if self.sampling:
            fields.update(top_p=self.top_p, seed=self.seed)
        return fields


@dataclass
class Generation:
    """One generated text and what it cost."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop" (end of text or a stop string) or "length"


@dataclass(kw_only=True)
class TeacherOutput:
    """One teacher output for one question, as cached.

    Attributes:
        teacher: the teacher's name (model name or id; `flan-t5-xl` for imports).
        example_id: the question's id.
        strategy: `zero_shot`, `few_shot`, `cot`, `teacher_forcing_cot`, `choice_logprobs` or `imported`.
        text: the cleaned rationale or answer text (None for choice scoring).
        answer: the choice index the text states (or the best-scored choice), None if none.
        choice_logprobs: log-likelihood of each choice (choice scoring only).
        matches_gold: whether `answer` is the gold answer (None when there is no answer).
        cache_key: the SHA-256 the output is stored under.
        task: the task key it belongs to.
        meta: raw text, finish reason, token counts, settings: what explains the output.
    """

    teacher: str
    example_id: str
    strategy: str
    text: str | None
    answer: int | None
    choice_logprobs: list[float] | None
    matches_gold: bool | None
    cache_key: str
    task: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


GenerationResult = Union[Generation, TeacherError]
ScoreResult = Union[list, TeacherError]


@runtime_checkable
class Teacher(Protocol):
    """A teacher backend.

    Attributes:
        name: the name outputs are stored under (the model's name).
        identity: changes whenever outputs could change (weights hash, server URL and model).
        calls: prompts sent to the model so far (generation and scoring), for cost accounting
            and for tests that a cached run makes no calls.
        tokenizer: the teacher's tokenizer when it is at hand (a local model), else None; with
            it, long inputs are fitted to `input_limit` by cutting their evidence (`evaluation.fit`).
        input_limit: the most tokens the model takes, None when unknown (a server).
    """

    name: str
    identity: str
    calls: int

    @property
    def tokenizer(self) -> object | None: ...

    @property
    def input_limit(self) -> int | None: ...

    def full_prompt(self, prompt: str) -> str:
        """Exactly what the model is sent for `prompt` (after any chat template)."""

    def cache_fields(self) -> dict:
        """Backend settings that change outputs beyond the identity and prompt."""

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, seeds: Sequence[int]
    ) -> Iterator[tuple[int, GenerationResult]]:
        """Generate for every prompt; yields (index, Generation or TeacherError) as each finishes,
        in any order. Raises TeacherUnavailable when the teacher cannot be used at all."""

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> Iterator[tuple[int, ScoreResult]]:
        """Log-likelihood of each continuation; yields (index, scores or TeacherError).
        Raises ScoringUnsupported when the backend cannot score."""

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` in the teacher's tokenizer, None when it has none at hand."""

    def close(self) -> None:
        """Free the model or connections."""
