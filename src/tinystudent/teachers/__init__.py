"""Teachers: answers, rationales and choice probabilities from local models and OpenAI-compatible
servers, each computed once (cached in SQLite), plus rationales imported from elsewhere.

    teacher = make_teacher("HuggingFaceTB/SmolLM2-135M-Instruct")            # local
    teacher = make_teacher("meta-llama/Llama-2-7b-chat-hf", base_url="http://gpu:8000/v1",
                           api_key_env="VLLM_KEY", concurrency=32)           # a vLLM server
    summary = teach(teacher, examples, "arc_easy", "teacher_forcing_cot", store, train_examples=train)
    rationales = load_rationales(store, teacher.name, "arc_easy")
"""

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING

from tinystudent.teachers.settings import HttpSettings as HttpSettings
from tinystudent.teachers.settings import LocalSettings as LocalSettings

if TYPE_CHECKING:  # else a type checker takes `teach` for the submodule of that name
    from tinystudent.teachers.teach import teach as teach

# The rest imports torch, so it loads on first use: the command line reads the settings models to
# build `tinystudent teach`'s options, and every command would otherwise wait seconds for torch.
_LAZY_NAMES = {
    "base": [
        "Generation",
        "GenerationSettings",
        "ScoringUnsupported",
        "Teacher",
        "TeacherError",
        "TeacherOutput",
        "TeacherUnavailable",
    ],
    "cache": ["task_key", "teacher_key"],
    "http": ["HttpTeacher"],
    "llamacpp": ["LlamaCppTeacher"],
    "local": ["LocalTeacher"],
    "make": ["make_teacher"],
    "prompts": ["STRATEGIES", "get_strategy"],
    "rationale_files": [
        "FLAN",
        "LLAMA",
        "ImportedRationale",
        "export_rationales_jsonl",
        "import_tinyllm_rationales",
        "read_bundled",
        "read_rationales_jsonl",
        "read_tinyllm",
        "store_rationales",
    ],
    "teach": [
        "SCORING",
        "TeachSummary",
        "load_rationales",
        "rationales_for_training",
        "teach",
        "teacher_choice_logprobs",
    ],
}
_MODULE_OF = {name: module for module, names in _LAZY_NAMES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


class _Teachers(ModuleType):
    """This package. Python sets a submodule, once imported, as an attribute of its package: that
    must not hide the lazy name it shares (`teach` the function, not `teachers/teach.py`)."""

    def __setattr__(self, name: str, value) -> None:
        if not (name in _MODULE_OF and isinstance(value, ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Teachers


# One list of names: the ones loaded above and the lazy ones.
__all__ = sorted(["HttpSettings", "LocalSettings", *_MODULE_OF])
