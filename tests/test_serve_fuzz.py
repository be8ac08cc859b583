"""`tinystudent serve` against hostile requests (issue 27, items 7 to 10), on loopback only.

Each hostile request gets its own 4xx and the server answers the next valid request; a bad
request among concurrent valid ones fails alone; a large body is refused at once with the
server's memory bounded; SIGTERM ends the server within seconds even after hostile requests.
The tiny random model keeps every test to seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import free_port, launch_serve, stop_serve
from fastapi.testclient import TestClient

from tinystudent.models import load_model
from tinystudent.serve import BodyLimit, create_app

# Like many real templates: roles must alternate, and a role is joined to text with `+`.
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BODY_LIMIT_MB = 4  # the module's server runs with --max-body-mb 4
TIMEOUT = 30.0  # any answer the tests wait for; a hung server fails the test instead of hanging it

VALID_COMPLETION = {"prompt": "The sun is", "max_tokens": 3, "temperature": 0}
VALID_CHAT = {"messages": [{"role": "user", "content": "Is the sun a star?"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def chat_folder(tiny_causal, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "strict-chat"
    shutil.copytree(tiny_causal, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = STRICT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def server(chat_folder, tmp_path_factory):
    """`tinystudent serve` on the strict chat model (by its absolute path), as a subprocess."""
    port = free_port()
    log = tmp_path_factory.mktemp("fuzz-log") / "serve.log"
    process = launch_serve(chat_folder, port, log, "--batch-wait-ms", "50", "--max-body-mb", str(BODY_LIMIT_MB))
    yield process, f"http://127.0.0.1:{port}", log
    stop_serve(process)


def post(base: str, path: str, body: dict, timeout: float = TIMEOUT) -> httpx.Response:
    return httpx.post(f"{base}/v1/{path}", json=body, timeout=timeout)


def assert_serving(base: str) -> None:
    assert httpx.get(f"{base}/health", timeout=TIMEOUT).status_code == 200
    completion = post(base, "completions", VALID_COMPLETION)
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] <= 3
    chat = post(base, "chat/completions", VALID_CHAT)
    assert chat.status_code == 200, chat.text


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


HOSTILE = [
    ("completions", {"prompt": [-5]}, "vocabulary"),
    ("completions", {"prompt": [2**70]}, "vocabulary"),
    ("completions", {"prompt": [[5, 6], [100000]]}, "vocabulary"),
    ("completions", {"prompt": [1e30]}, ""),
    ("chat/completions", {"messages": [{"role": 5, "content": "hi"}]}, "role"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]},
        "roles must alternate",
    ),
    ("chat/completions", {"messages": [{"role": "user", "content": None}]}, "content"),
    ("chat/completions", {"messages": [{"role": "user", "content": {"text": "hi"}}]}, "content"),
    ("chat/completions", {"messages": []}, "empty"),
]


HOSTILE_IDS = [
    "negative-id",
    "id-2**70",
    "id-past-the-vocabulary",
    "id-1e30",
    "role-5",
    "two-user-turns",
    "null-content",
    "object-content",
    "no-messages",
]


@pytest.mark.slow
@pytest.mark.parametrize("path, body, message", HOSTILE, ids=HOSTILE_IDS)
def test_a_hostile_request_gets_a_400_and_the_server_keeps_serving(server, path, body, message):
    _, base, _ = server
    response = post(base, path, {**body, "max_tokens": 2})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert_serving(base)


def test_a_bad_id_among_concurrent_valid_requests_fails_alone(server):
    _, base, _ = server
    bodies = [{"prompt": f"Question {i}: which gas?", "max_tokens": 4, "temperature": 0} for i in range(15)]
    bodies.insert(7, {"prompt": [[5, 6, 7], [100000]], "max_tokens": 4})
    for _ in range(2):
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: post(base, "completions", b), bodies))
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * 7 + [400] + [200] * 8, [r.text[:200] for r in responses]
    assert_serving(base)


def test_a_large_body_is_refused_at_once_and_memory_stays_bounded(server):
    process, base, _ = server
    before = memory_kib(process.pid)
    port = int(base.rsplit(":", 1)[1])
    # 50 MB announced: refused from its headers, none of it read.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert time.monotonic() - started < 5
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    message = json.loads(payload)["error"]["message"]
    assert f"{BODY_LIMIT_MB} MiB" in message and "--max-body-mb" in message
    # Bodies under the limit whose prompts cannot fit: refused before tokenizing, in seconds.
    big = BODY_LIMIT_MB * 2**20 - 1000
    for path, body in [
        ("completions", {"prompt": "a" * big}),
        ("completions", {"prompt": "why " * (big // 4)}),
        ("completions", {"prompt": [5] * (big // 3)}),
        ("completions", {"prompt": ["The sun", "b" * (big // 2)]}),
        ("chat/completions", {"messages": [{"role": "user", "content": "c" * big}]}),
        ("chat/completions", {"messages": [{"role": "user", "content": "c"}] * (big // 36)}),
        ("completions", {"prompt": ["a"] * (big // 5)}),
    ]:
        started = time.monotonic()
        response = post(base, path, body, timeout=20)
        assert response.status_code == 400, response.text[:300]
        assert re.search("maximum context length is 512|at most 1024", response.json()["error"]["message"])
        assert time.monotonic() - started < 5, path
    after = memory_kib(process.pid)
    assert after["VmHWM"] - max(before["VmHWM"], before["VmRSS"]) < 200 * 1024, (before, after)
    assert_serving(base)


def test_models_shows_the_name_not_the_path(server, chat_folder):
    _, base, _ = server
    response = httpx.get(f"{base}/v1/models", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == chat_folder.name == "strict-chat"
    assert str(chat_folder.parent) not in response.text
    missing = post(base, "completions", {"model": "other", "prompt": "a"})
    assert missing.status_code == 404 and str(chat_folder.parent) not in missing.text
    assert post(base, "completions", {**VALID_COMPLETION, "model": "strict-chat"}).status_code == 200
    assert post(base, "completions", {**VALID_COMPLETION, "model": str(chat_folder)}).status_code == 200


@pytest.mark.slow
def test_sigterm_ends_the_server_within_seconds_after_hostile_requests(tiny_causal, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = launch_serve(tiny_causal, port, tmp_path / "serve.log")
    try:
        for body in ({"prompt": [-5]}, {"prompt": [2**70]}, {"prompt": [[1], [100000]]}):
            assert post(base, "completions", body).status_code == 400
        with ThreadPoolExecutor(2) as pool:
            # a long generation still running when SIGTERM comes
            running = pool.submit(post, base, "completions", {"prompt": "The sun", "max_tokens": 400}, 20.0)
            time.sleep(0.5)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
            assert time.monotonic() - started < 10
            try:
                running.result(timeout=15)
            except httpx.TransportError:
                pass  # cut off by the shutdown: fine, the point is that the server ended
    finally:
        stop_serve(process)


STUCK_SERVER = """
import sys, time
import tinystudent.serve as serve
serve.Engine._execute = lambda self, rows: time.sleep(300)  # a batch that never ends
serve.run_server(sys.argv[1], port=int(sys.argv[2]))
"""


@pytest.mark.slow
def test_sigterm_ends_the_server_within_seconds_while_the_engine_is_stuck(tiny_causal, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", STUCK_SERVER, str(tiny_causal), str(port)],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with ThreadPoolExecutor(2) as pool:
            stuck = [pool.submit(post, base, "completions", VALID_COMPLETION, 20.0) for _ in range(2)]
            time.sleep(1.0)  # one in the stuck batch, one waiting for the engine
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
            assert time.monotonic() - started < 10
            for request in stuck:
                try:
                    assert request.result(timeout=20).status_code >= 500
                except httpx.TransportError:
                    pass  # cut off by the shutdown
    finally:
        stop_serve(process)


def test_a_port_outside_1_to_65535_is_one_clear_error(tiny_causal):
    """Refused by the command line, before the model loads."""
    for port, bound in (("70000", "less than or equal to 65535"), ("0", "greater than or equal to 1")):
        result = subprocess.run(
            [sys.executable, "-m", "tinystudent", "serve", str(tiny_causal), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        )
        assert result.returncode == 2, result.stderr[-2000:]
        error = [line for line in result.stderr.splitlines() if "Error" in line]
        assert error == [f"Error: Invalid value for '--port': Input should be {bound}"], result.stderr[-2000:]


# --- in-process: the engine's failures, and the body limit's reading ---------------------------


@pytest.fixture(scope="module")
def loaded(tiny_causal):
    return load_model(str(tiny_causal), device="cpu")


def test_a_failing_batch_is_run_again_request_by_request(loaded):
    """A request that passes every check but makes the model fail fails alone (a 500)."""
    app = create_app(loaded, batch_wait_ms=300)
    engine = app.state.engine
    execute, batches = engine._execute, []

    def poisoned(rows):
        batches.append(len(rows))
        if any(row.params.seed == 13 for row in rows):
            raise RuntimeError("a poisoned row")
        return execute(rows)

    engine._execute = poisoned
    with TestClient(app) as client:
        seeds = [1, 2, 3, 13, 4, 5, 6, 7]
        with ThreadPoolExecutor(len(seeds)) as pool:
            responses = list(
                pool.map(
                    lambda seed: client.post(
                        "/v1/completions", json={"prompt": f"Water {seed}", "max_tokens": 3, "seed": seed}
                    ),
                    seeds,
                )
            )
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 200, 200, 500, 200, 200, 200, 200], [r.text[:200] for r in responses]
        assert "a poisoned row" in responses[3].json()["error"]["message"]
        assert max(batches) > 1  # the requests did share a batch
        assert client.post("/v1/completions", json=VALID_COMPLETION).status_code == 200


def test_health_reports_a_dead_engine(loaded):
    app = create_app(loaded)
    engine = app.state.engine

    def broken():
        raise RuntimeError("the engine broke")

    engine._serve = broken
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while (health := client.get("/health")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.status_code == 503 and "the engine broke" in health.json()["error"]["message"]
        started = time.monotonic()
        response = client.post("/v1/completions", json=VALID_COMPLETION)
        assert response.status_code == 503 and time.monotonic() - started < 5


def test_the_body_limit_is_8_mib_by_default_and_configurable(loaded):
    with TestClient(create_app(loaded)) as client:
        response = client.post(
            "/v1/completions", content=b" " * (8 * 2**20 + 1), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413 and "8 MiB" in response.json()["error"]["message"]
    with TestClient(create_app(loaded, max_body_bytes=2000)) as client:  # create_app's own limit
        small = client.post("/v1/completions", json={**VALID_COMPLETION, "user": "x" * 1000})
        assert small.status_code == 200
        large = client.post("/v1/completions", json={**VALID_COMPLETION, "user": "x" * 3000})
        assert large.status_code == 413 and "2000 bytes" in large.json()["error"]["message"]


def test_the_body_limit_reads_no_further_than_the_limit():
    """A body sent in chunks (no Content-Length) is read up to the limit, then refused."""

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app saw a body over the limit")

    async def exchange(headers):
        read, sent = [], []

        async def receive():
            read.append(1)
            return {"type": "http.request", "body": b"x" * 2**20, "more_body": True}  # endless

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}
        await asyncio.wait_for(BodyLimit(app, limit=3 * 2**20)(scope, receive, send), 5)
        return len(read), sent

    chunks, sent = asyncio.run(exchange([]))
    assert chunks == 4 and sent[0]["status"] == 413
    chunks, sent = asyncio.run(exchange([(b"content-length", b"52428800")]))
    assert chunks == 0 and sent[0]["status"] == 413
