"""The llama.cpp engine for GGUF teachers: the same prompt text as the local backend, its own
cache entries, and generation through llama-cpp-python (an optional extra that builds llama.cpp:
those tests skip without it)."""

from __future__ import annotations

import pytest

from tinystudent.models.loading import gguf_file, resolve_model
from tinystudent.teachers.llamacpp import render_chat

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(SMOL).path)


@pytest.mark.parametrize("prompt", ["Is 4 even?", "Question: {x}\n  Answer with yes or no.\n"])
def test_the_chat_template_renders_as_transformers_renders_it(smol_tokenizer, prompt):
    from tinystudent.evaluation.generative import render_prompt

    template = smol_tokenizer.chat_template
    rendered = render_chat(template, prompt, smol_tokenizer.bos_token or "", smol_tokenizer.eos_token)
    assert rendered == render_prompt(smol_tokenizer, prompt)
    assert prompt in rendered and rendered != prompt


def test_a_name_that_is_no_gguf_file_is_refused_with_what_to_give(tmp_path):
    folder_model = tmp_path / "model.safetensors"
    folder_model.write_bytes(b"not a gguf")
    for name in (str(folder_model), str(tmp_path / "missing.gguf"), "someone/unknown-model"):
        with pytest.raises(FileNotFoundError, match="give the .gguf file"):
            gguf_file(name)


@pytest.fixture(scope="module")
def llama_teacher():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'tinystudent[llamacpp]')")
    from tinystudent.teachers import make_teacher

    teacher = make_teacher(SMOL, engine="llamacpp", chat=True)
    yield teacher
    teacher.close()


def test_llama_cpp_writes_greedy_answers_that_do_not_depend_on_their_neighbours(llama_teacher, smol_tokenizer):
    from tinystudent.evaluation.generative import render_prompt
    from tinystudent.teachers import GenerationSettings

    prompts = ["What is the capital of France?", "Name a colour.", "Is 4 an even number? Say yes or no."]
    assert llama_teacher.full_prompt(prompts[0]) == render_prompt(smol_tokenizer, prompts[0])
    settings = GenerationSettings(max_new_tokens=12)
    together = dict(llama_teacher.generate(prompts, settings, [0, 0, 0]))
    alone = dict(llama_teacher.generate(prompts[1:2], settings, [0]))
    assert together[1].text == alone[0].text and together[1].text.strip()
    assert all(0 < out.completion_tokens <= 12 for out in together.values())
    again = dict(llama_teacher.generate(prompts[:1], settings, [0]))
    assert again[0].text == together[0].text  # greedy: the same text every time
    assert llama_teacher.cache_fields()["engine"] == "llamacpp"  # never mixed with transformers' outputs


def test_llama_cpp_fails_a_prompt_longer_than_its_context_alone(llama_teacher):
    from tinystudent.teachers import GenerationSettings
    from tinystudent.teachers.base import TeacherError

    long = "word " * (llama_teacher.input_limit + 10)
    results = dict(llama_teacher.generate([long, "Say hi."], GenerationSettings(max_new_tokens=4), [0, 0]))
    assert isinstance(results[0], TeacherError) and "context" in str(results[0])
    assert not isinstance(results[1], TeacherError)
