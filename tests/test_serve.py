"""The OpenAI-compatible server's contract, in-process (the subprocess runs in test_teachers_http)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from tinystudent.models import load_model
from tinystudent.serve import create_app

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def loaded(tiny_causal):
    return load_model(str(tiny_causal), device="cpu")


@pytest.fixture(scope="module")
def client(loaded):
    with TestClient(create_app(loaded, served_name="tiny", batch_wait_ms=30)) as test_client:
        yield test_client


def post(client, path, **body):
    response = client.post(f"/v1/{path}", json={"model": "tiny", **body})
    return response.status_code, response.json()


def test_models_lists_the_served_model(client, loaded):
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "tiny" and data[0]["tinystudent"]["identity"] == loaded.resolved.identity
    assert data[0]["max_model_len"] == 512


def test_echo_logprobs_are_the_prompt_tokens_log_probabilities(client, loaded):
    prompt = "Question: Which gas do plants take in?\nAnswer: carbon dioxide"
    status, body = post(client, "completions", prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    assert status == 200
    choice = body["choices"][0]
    assert choice["text"] == prompt
    logprobs = choice["logprobs"]
    ids = loaded.tokenizer.encode(prompt)
    assert len(logprobs["tokens"]) == len(ids) == body["usage"]["prompt_tokens"]
    assert "".join(logprobs["tokens"]) == prompt
    assert logprobs["text_offset"] == [len("".join(logprobs["tokens"][:i])) for i in range(len(ids))]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    with torch.no_grad():
        reference = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0].float(), -1)
    expected = [reference[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert logprobs["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    best = max(logprobs["top_logprobs"][1].values())
    assert best == pytest.approx(reference[0].max().item(), abs=1e-4) and len(logprobs["top_logprobs"][1]) <= 2


def test_one_more_token_comes_from_the_same_pass(client):
    prompt = "The sun is a star. Water"
    _, scored = post(client, "completions", prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    _, plus_one = post(client, "completions", prompt=prompt, echo=True, logprobs=0, max_tokens=1, temperature=0)
    _, generated = post(client, "completions", prompt=prompt, max_tokens=1, temperature=0)
    assert plus_one["choices"][0]["text"] == prompt + generated["choices"][0]["text"]
    prompt_part = plus_one["choices"][0]["logprobs"]["token_logprobs"][
        : len(scored["choices"][0]["logprobs"]["tokens"])
    ]
    assert prompt_part == scored["choices"][0]["logprobs"]["token_logprobs"]


def test_generation_settings_are_honoured(client):
    _, greedy = post(client, "completions", prompt="The sun is", max_tokens=12, temperature=0)
    text = greedy["choices"][0]["text"]
    assert greedy["usage"]["completion_tokens"] <= 12
    _, again = post(client, "completions", prompt="The sun is", max_tokens=12, temperature=0)
    assert again["choices"][0]["text"] == text
    stop = text[3:5]
    _, stopped = post(client, "completions", prompt="The sun is", max_tokens=12, temperature=0, stop=[stop])
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    # the tokens after a row stopped are padding, not part of the answer
    assert stopped["usage"]["completion_tokens"] < greedy["usage"]["completion_tokens"]
    samples = [
        post(client, "completions", prompt="The sun is", max_tokens=8, temperature=1.0, seed=s)[1]["choices"][0]["text"]
        for s in (1, 1, 2)
    ]
    assert samples[0] == samples[1] != samples[2]


def test_prompt_lists_and_token_ids(client, loaded):
    _, body = post(client, "completions", prompt=["Water", "The sun"], max_tokens=3, temperature=0)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    ids = loaded.tokenizer.encode("Water")
    _, by_ids = post(client, "completions", prompt=ids, max_tokens=3, temperature=0)
    assert by_ids["choices"][0]["text"] == body["choices"][0]["text"]


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("completions", {"model": "other", "prompt": "a"}, 404, "does not exist here"),
        ("completions", {"prompt": "why " * 400, "max_tokens": 200}, 400, "maximum context length is 512"),
        ("completions", {"prompt": "a", "n": 2}, 400, "n must be 1"),
        ("completions", {"prompt": "a", "stream": True}, 400, "stream is not supported"),
        ("completions", {"prompt": "a", "logprobs": 50}, 400, "logprobs"),
        ("completions", {"max_tokens": 3}, 400, "prompt"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "no chat template"),
    ],
)
def test_bad_requests_get_openai_style_errors(client, path, body, status, message):
    response = client.post(f"/v1/{path}", json={"model": "tiny", **body})
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_malformed_json_body_is_a_400(client):
    response = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


def test_chat_completions_use_the_chat_template(tiny_causal, tmp_path):
    folder = tmp_path / "chat-model"
    shutil.copytree(tiny_causal, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    chat_model = load_model(str(folder), device="cpu")
    with TestClient(create_app(chat_model)) as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Is the sun a star?"}]}],
                "max_tokens": 5,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 2,
            },
        )
        body = response.json()
        assert response.status_code == 200, body
        message = body["choices"][0]["message"]
        assert message["role"] == "assistant" and body["usage"]["completion_tokens"] <= 5
        content = body["choices"][0]["logprobs"]["content"]
        assert len(content) == body["usage"]["completion_tokens"]
        assert "".join(c["token"] for c in content) == message["content"]
        assert all(len(c["top_logprobs"]) <= 2 and c["logprob"] <= 0 for c in content)
        prompt = chat_model.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Is the sun a star?"}], tokenize=False, add_generation_prompt=True
        )
        same = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 5, "temperature": 0}).json()
        assert same["choices"][0]["text"] == message["content"]


def test_an_api_key_is_required_when_configured(loaded):
    with TestClient(create_app(loaded, api_key="s3cret")) as client:
        assert client.get("/health").status_code == 200
        for path in ("/v1/models", "/stats", "/docs", "/openapi.json", "/redoc", "/anything"):
            assert client.get(path).status_code == 401, path
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_concurrent_requests_are_batched_with_the_same_answers(client):
    prompts = [f"Question {i}: which gas?" for i in range(8)]
    alone = [post(client, "completions", prompt=p, echo=True, logprobs=0, max_tokens=0)[1] for p in prompts]
    before = client.get("/stats").json()
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda p: post(client, "completions", prompt=p, echo=True, logprobs=0, max_tokens=0)[1], prompts)
        )
    after = client.get("/stats").json()
    assert after["forward_batches"] - before["forward_batches"] < 8  # some requests shared a pass
    for a, b in zip(alone, together):
        assert a["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
            b["choices"][0]["logprobs"]["token_logprobs"][1:], abs=1e-4
        )


def test_a_seq2seq_model_is_served_too(tiny_seq2seq):
    with TestClient(create_app(load_model(str(tiny_seq2seq), device="cpu"))) as client:
        body = client.post(
            "/v1/completions", json={"prompt": "Is the sun a star?", "max_tokens": 4, "temperature": 0}
        ).json()
        assert body["usage"]["completion_tokens"] <= 4 and isinstance(body["choices"][0]["text"], str)
        refused = client.post("/v1/completions", json={"prompt": "a", "echo": True, "logprobs": 1, "max_tokens": 0})
        assert refused.status_code == 400 and "causal model" in refused.json()["error"]["message"]
