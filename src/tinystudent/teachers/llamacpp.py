"""A GGUF teacher run by llama.cpp in this process (`pip install 'tinystudent[llamacpp]'`): the
engine a CPU user would pick for a quantised model, where the local backend dequantises the file
into float32 PyTorch weights.

Prompts are the same text the local backend sends: the GGUF's chat template (the one the model
was published with) rendered the way transformers renders it. Outputs are cached apart from the
local backend's (`cache_fields` names the engine): quantised arithmetic writes other texts.
Generation runs one prompt after another, greedy or sampled with a seed per prompt; choice
scoring is not offered (score with the local backend, which reads the same file).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from tinystudent.models.requests import ChoiceRequest
from tinystudent.teachers.base import (
    Generation,
    GenerationResult,
    GenerationSettings,
    ScoreResult,
    ScoringUnsupported,
    TeacherError,
)
from tinystudent.threads import configure_threads


def render_chat(template: str, prompt: str, bos: str, eos: str) -> str:
    """`prompt` as the user's message in `template`, ready for the answer, rendered as
    transformers' `apply_chat_template` renders it (a sandboxed Jinja environment that trims
    blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"the chat template refused the prompt: {message}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals.update(raise_exception=raise_exception, strftime_now=lambda f: time.strftime(f))
    messages = [{"role": "user", "content": prompt}]
    return environment.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


class LlamaCppTeacher:
    """Generation with a GGUF file through llama-cpp-python.

    Args:
        path: the .gguf file.
        identity: what the outputs are cached under besides the engine (the file's digest, as
            the local backend names it).
        context: the most tokens of prompt and answer together (llama.cpp's `n_ctx`).
        threads: CPU threads; default: this process's share (`tinystudent.threads`).
        chat: wrap prompts in the file's chat template; default: when it has one.
    """

    tokenizer = None  # no transformers tokenizer: long prompts fail alone instead of being cut

    def __init__(
        self,
        path: str | Path,
        identity: str,
        context: int = 4096,
        threads: int | None = None,
        chat: bool | None = None,
    ):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise RuntimeError(
                "the llama.cpp engine needs llama-cpp-python: pip install 'tinystudent[llamacpp]' "
                "(it builds llama.cpp, which takes a C++ compiler and some minutes), or use engine: transformers"
            ) from None

        path = Path(path)
        if path.suffix.lower() != ".gguf" or not path.is_file():
            raise FileNotFoundError(f"{path}: the llama.cpp engine reads a .gguf file")
        self.llm = Llama(model_path=str(path), n_ctx=context, n_threads=threads or configure_threads(), verbose=False)
        self.name, self.identity = str(path), identity
        self.input_limit = self.llm.n_ctx()
        template = self.llm.metadata.get("tokenizer.chat_template")
        if chat and not template:
            raise ValueError(f"{path} has no chat template; use chat=False")
        self.template = template if chat is not False else None
        self.calls = 0

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def full_prompt(self, prompt: str) -> str:
        if not self.template:
            return f"{prompt}\nAnswer:"
        bos, eos = self._token_text(self.llm.token_bos()), self._token_text(self.llm.token_eos())
        return render_chat(self.template, prompt, bos, eos)

    def cache_fields(self) -> dict:
        return {"backend": "local", "engine": "llamacpp", "chat": bool(self.template)}

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, seeds: Sequence[int]
    ) -> Iterator[tuple[int, GenerationResult]]:
        for index, prompt in enumerate(prompts):
            ids = self.llm.tokenize(self.full_prompt(prompt).encode(), add_bos=True, special=True)
            if len(ids) + settings.max_new_tokens > self.input_limit:
                yield (
                    index,
                    TeacherError(
                        f"the prompt has {len(ids)} tokens and max_new_tokens is {settings.max_new_tokens}, more "
                        f"than the context of {self.input_limit} tokens (use fewer shots or a smaller max_new_tokens)"
                    ),
                )
                continue
            self.calls += 1
            answer: Any = self.llm.create_completion(
                ids,
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=seeds[index],
                stop=list(settings.stop) or None,
            )
            choice, usage = answer["choices"][0], answer["usage"]
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            yield index, Generation(choice["text"], usage["prompt_tokens"], usage["completion_tokens"], finish)

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> Iterator[tuple[int, ScoreResult]]:
        raise ScoringUnsupported(
            f"the llama.cpp engine does not score choices; score {self.name} with engine: transformers"
        )

    def close(self) -> None:
        self.llm.close()
