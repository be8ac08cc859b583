"""Teachers: answers, rationales and choice probabilities from local models and OpenAI-compatible
servers, each computed once (cached in SQLite), plus rationales imported from elsewhere.

    teacher = make_teacher("HuggingFaceTB/SmolLM2-135M-Instruct")            # local
    teacher = make_teacher("meta-llama/Llama-2-7b-chat-hf", base_url="http://gpu:8000/v1",
                           api_key_env="VLLM_KEY", concurrency=32)           # a vLLM server
    summary = teach(teacher, examples, "arc_easy", "teacher_forcing_cot", store, train_examples=train)
    rationales = load_rationales(store, teacher.name, "arc_easy")
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tinystudent.models import load_model
from tinystudent.models.kinds import kind_adapter, known_kinds
from tinystudent.models.loading import gguf_file
from tinystudent.teachers.base import (
    Generation,
    GenerationSettings,
    ScoringUnsupported,
    Teacher,
    TeacherError,
    TeacherOutput,
    TeacherUnavailable,
)
from tinystudent.teachers.cache import task_key, teacher_key
from tinystudent.teachers.http import HttpTeacher
from tinystudent.teachers.llamacpp import LlamaCppTeacher
from tinystudent.teachers.local import LocalTeacher
from tinystudent.teachers.prompts import STRATEGIES, get_strategy
from tinystudent.teachers.rationale_files import (
    FLAN,
    LLAMA,
    ImportedRationale,
    export_rationales_jsonl,
    import_tinyllm_rationales,
    read_bundled,
    read_rationales_jsonl,
    read_tinyllm,
    store_rationales,
)
from tinystudent.teachers.teach import (
    SCORING,
    TeachSummary,
    load_rationales,
    rationales_for_training,
    teach,
    teacher_choice_logprobs,
)


class LocalSettings(BaseModel):
    """Settings of a local teacher (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(8, ge=1)
    chat: Optional[bool] = None
    engine: Literal["transformers", "llamacpp"] = "transformers"
    kind: Optional[str] = None
    revision: Optional[str] = None
    trust_remote_code: bool = False

    @field_validator("kind")
    @classmethod
    def _a_kind_that_generates(cls, kind: Optional[str]) -> Optional[str]:
        if kind is None:
            return None

        writers = [name for name in known_kinds() if kind_adapter(name).generates]
        if kind not in writers:
            raise ValueError(f"a teacher writes text: its kind must be one of {writers}, got {kind!r}")
        return kind


class HttpSettings(BaseModel):
    """Settings of a teacher behind an OpenAI-compatible server (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    endpoint: Literal["chat", "completions"] = "chat"
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff: float = Field(0.5, ge=0)
    identity: Optional[str] = None
    echo_max_tokens: int = Field(1, ge=0)
    cooldown: float = Field(30.0, gt=0)


def _validated(schema: type[BaseModel], settings: dict, where: str) -> dict:
    try:
        return schema(**settings).model_dump()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{where} settings: {problems} (allowed: {sorted(schema.model_fields)})") from None


def make_teacher(
    name: str, base_url: str | Sequence[str] | None = None, api_key_env: str | None = None, **settings
) -> Teacher:
    """A teacher by model name: served at `base_url` (OpenAI-compatible) or loaded here.

    Args:
        name: local: a Hub id, folder or GGUF file; HTTP: the model name the server knows.
        base_url: the server's URL (`http://host:port/v1`), or a list of servers of the same model
            that share the requests (see `HttpTeacher` for their cache identity); None loads the
            model locally.
        api_key_env: name of the environment variable holding the server's API key.
        settings: local: device, dtype, batch_size, chat, kind, revision, trust_remote_code,
            engine (`transformers`, or `llamacpp` for a GGUF file: `teachers.llamacpp`);
            HTTP: endpoint, concurrency (per server), timeout, max_retries, backoff, identity,
            echo_max_tokens, cooldown.
    """
    if base_url is not None and (base_url or not isinstance(base_url, str)):  # HttpTeacher refuses []
        return HttpTeacher(
            name, base_url, api_key_env=api_key_env, **_validated(HttpSettings, settings, "HTTP teacher")
        )
    if api_key_env:
        raise ValueError("api_key_env is for a teacher behind a server: give base_url too")

    options = _validated(LocalSettings, settings, "local teacher")
    if options["engine"] == "llamacpp":
        path, identity = gguf_file(name)
        return LlamaCppTeacher(path, identity, chat=options["chat"])
    loaded = load_model(
        name,
        device=options["device"],
        dtype=options["dtype"],
        kind=options["kind"],
        trust_remote_code=options["trust_remote_code"],
        revision=options["revision"],
    )
    return LocalTeacher(loaded, batch_size=options["batch_size"], chat=options["chat"])


__all__ = [
    "FLAN",
    "LLAMA",
    "SCORING",
    "STRATEGIES",
    "Generation",
    "GenerationSettings",
    "HttpTeacher",
    "ImportedRationale",
    "LocalTeacher",
    "ScoringUnsupported",
    "TeachSummary",
    "Teacher",
    "TeacherError",
    "TeacherOutput",
    "TeacherUnavailable",
    "export_rationales_jsonl",
    "get_strategy",
    "import_tinyllm_rationales",
    "load_rationales",
    "rationales_for_training",
    "make_teacher",
    "read_bundled",
    "read_rationales_jsonl",
    "read_tinyllm",
    "store_rationales",
    "task_key",
    "teach",
    "teacher_choice_logprobs",
    "teacher_key",
]
