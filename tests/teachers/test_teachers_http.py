"""The HTTP teacher against a real `tinystudent serve` subprocess on loopback, and against a small
misbehaving server (500s, a hang, malformed JSON, refusals) run in-process on loopback."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tinystudent.models import load_model
from tinystudent.store import Store
from tinystudent.tasks import Example
from tinystudent.teachers import (
    HttpTeacher,
    LocalTeacher,
    TeacherUnavailable,
    load_rationales,
    make_teacher,
    teach,
    teacher_choice_logprobs,
)
from tinystudent.teachers.http import normalise_base_url

QUESTIONS = [
    Example(
        f"q{i}", f"Which property of sample {i} do scientists measure first?", ("mass", "colour", "age", "shape"), i % 4
    )
    for i in range(16)
]


def server_stats(base_url: str) -> dict:
    return httpx.get(base_url.removesuffix("/v1") + "/stats").json()


def http_teacher(base_url: str, model, **settings) -> HttpTeacher:
    teacher = make_teacher(str(model), base_url=base_url, endpoint="completions", **settings)
    assert isinstance(teacher, HttpTeacher)
    return teacher


# --- against tinystudent serve ------------------------------------------------------------------


@pytest.mark.slow
def test_generation_through_serve_equals_local_generation(served_tiny_causal, tiny_causal, tmp_path):
    remote = http_teacher(served_tiny_causal.base_url, tiny_causal, concurrency=4)
    local = LocalTeacher(load_model(str(tiny_causal), device="cpu"), batch_size=4)
    with Store(tmp_path / "remote.sqlite") as store:
        over_http = teach(remote, QUESTIONS[:6], "toy", "cot", store, max_new_tokens=8)
    with Store(tmp_path / "local.sqlite") as store:
        in_process = teach(local, QUESTIONS[:6], "toy", "cot", store, max_new_tokens=8)
    assert over_http.generated == 6 and over_http.failed == 0
    assert [o.meta["raw"] for o in over_http.outputs] == [o.meta["raw"] for o in in_process.outputs]
    assert all(o.meta["completion_tokens"] <= 8 for o in over_http.outputs)


def test_choice_scoring_through_serve_equals_local_scoring(served_tiny_causal, tiny_causal, tmp_path):
    remote = http_teacher(served_tiny_causal.base_url, tiny_causal)
    local = LocalTeacher(load_model(str(tiny_causal), device="cpu"))
    with Store(tmp_path / "cache.sqlite") as store:
        over_http = teacher_choice_logprobs(remote, QUESTIONS[:5], "toy", store, allow_generative=False)
        calls = remote.calls
        assert teacher_choice_logprobs(remote, QUESTIONS[:5], "toy", store) == over_http
        assert remote.calls == calls
        in_process = teacher_choice_logprobs(local, QUESTIONS[:5], "toy", store)
    for q in QUESTIONS[:5]:
        assert over_http[q.id] == pytest.approx(in_process[q.id], abs=1e-3)


def test_concurrent_requests_are_batched_and_a_rerun_sends_none(served_tiny_causal, tiny_causal, tmp_path):
    base_url = served_tiny_causal.base_url
    before = server_stats(base_url)
    concurrent = http_teacher(base_url, tiny_causal, concurrency=8)
    one_by_one = http_teacher(base_url, tiny_causal, concurrency=1)
    with Store(tmp_path / "a.sqlite") as store:
        fast = teach(concurrent, QUESTIONS, "toy", "zero_shot", store, max_new_tokens=6)
        after = server_stats(base_url)
        again = teach(concurrent, QUESTIONS, "toy", "zero_shot", store, max_new_tokens=6)
        assert again.cached == 16 and again.model_calls == 0
        assert server_stats(base_url)["prompts"] == after["prompts"]  # no request reached it
    with Store(tmp_path / "b.sqlite") as store:
        slow = teach(one_by_one, QUESTIONS, "toy", "zero_shot", store, max_new_tokens=6)
    assert after["prompts"] - before["prompts"] == 16
    assert after["largest_batch"] > 1  # the server ran concurrent requests together
    assert [o.text for o in fast.outputs] == [o.text for o in slow.outputs]


@pytest.mark.slow
def test_a_server_killed_mid_run_resumes_from_the_cache(served_tiny_causal, tiny_causal, tmp_path):
    teacher = http_teacher(
        served_tiny_causal.base_url, tiny_causal, concurrency=1, max_retries=2, backoff=0.05, timeout=20
    )
    with Store(tmp_path / "cache.sqlite") as store:

        def teacher_outputs() -> int:
            return store.db.execute("SELECT COUNT(*) FROM teacher_outputs").fetchone()[0]

        def kill_after_three(status, output):
            if status == "generated" and teacher_outputs() == 3:
                served_tiny_causal.process.kill()

        with pytest.raises(TeacherUnavailable, match="could not connect.*new output\\(s\\) were saved"):
            teach(teacher, QUESTIONS[:10], "toy", "cot", store, max_new_tokens=16, on_output=kill_after_three)
        saved = teacher_outputs()
        assert saved in (3, 4)  # the fourth may have been answered just before the kill
        served_tiny_causal.restart()  # same port, so the same teacher identity
        resumed = teach(teacher, QUESTIONS[:10], "toy", "cot", store, max_new_tokens=16)
        assert (resumed.cached, resumed.generated, resumed.failed) == (saved, 10 - saved, 0)
        assert server_stats(served_tiny_causal.base_url)["prompts"] == 10 - saved
        assert teacher_outputs() == 10
        assert len(load_rationales(store, teacher.name, "toy", "cot")) == 10


# --- against a misbehaving server ---------------------------------------------------------------


class Scripted:
    """A loopback HTTP server answering POSTs from a script: `script(path, body, attempt)` returns
    (status, body bytes, headers, seconds to wait first). Records every request."""

    def __init__(self, script):
        self.script = script
        self.requests: list[tuple[str, dict, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, body, dict(self.headers)))
                status, payload, headers, delay = owner.script(self.path, body, len(owner.requests))
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        servers.append(Scripted(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def completion(text: str) -> bytes:
    return json.dumps(
        {
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3},
        }
    ).encode()


def chat(text: str) -> bytes:
    return json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    ).encode()


def test_500s_and_429s_are_retried_with_backoff(scripted, tmp_path):
    def script(path, body, attempt):
        if attempt <= 2:
            return 500, b"oops", {}, 0
        if attempt == 3:
            return 429, b"slow down", {"Retry-After": "0"}, 0
        return 200, completion(" The answer is (B)."), {}, 0

    server = scripted(script)
    teacher = make_teacher(
        "big-model", base_url=server.base_url, endpoint="completions", max_retries=4, backoff=0.01, concurrency=1
    )
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(teacher, QUESTIONS[:1], "toy", "zero_shot", store)
    assert summary.generated == 1 and summary.outputs[0].answer == 1
    assert len(server.requests) == 4 and server.requests[0][0] == "/v1/completions"
    sent = server.requests[0][1]
    assert sent["model"] == "big-model" and sent["temperature"] == 0.0 and "seed" not in sent


def test_a_server_that_keeps_failing_stops_the_run_with_a_clear_error(scripted, tmp_path):
    server = scripted(lambda path, body, attempt: (503, b"model is loading", {}, 0))
    teacher = make_teacher("m", base_url=server.base_url, max_retries=2, backoff=0.01)
    with (
        Store(tmp_path / "cache.sqlite") as store,
        pytest.raises(TeacherUnavailable, match="gave up after 3 attempts; last: HTTP 503: model is loading"),
    ):
        teach(teacher, QUESTIONS[:4], "toy", "cot", store)


def test_a_hung_server_times_out(scripted, tmp_path):
    server = scripted(lambda path, body, attempt: (200, completion("late"), {}, 3.0))
    teacher = make_teacher(
        "m", base_url=server.base_url, endpoint="completions", timeout=0.3, max_retries=1, backoff=0.01, concurrency=2
    )
    started = time.monotonic()
    with (
        Store(tmp_path / "cache.sqlite") as store,
        pytest.raises(TeacherUnavailable, match="no answer within the 0.3 s timeout"),
    ):
        teach(teacher, QUESTIONS[:6], "toy", "zero_shot", store)
    assert time.monotonic() - started < 5


def test_malformed_json_and_4xx_fail_their_question_only(scripted, tmp_path):
    def script(path, body, attempt):
        prompt = body["messages"][0]["content"]
        if "sample 1 " in prompt:
            return 200, b'{"choices": [{"message": ', {}, 0
        if "sample 2 " in prompt:
            return 400, b'{"error": {"message": "prompt is too long"}}', {}, 0
        if "sample 3 " in prompt:
            return 200, b'{"choices": []}', {}, 0
        return 200, chat("Thus, the answer is (A)."), {}, 0

    server = scripted(script)
    teacher = make_teacher("m", base_url=server.base_url + "/", max_retries=0)
    with Store(tmp_path / "cache.sqlite") as store:
        summary = teach(teacher, QUESTIONS[:5], "toy", "cot", store)
    assert (summary.generated, summary.failed) == (2, 3)
    errors = " | ".join(summary.errors)
    assert "q1: " in errors and "malformed JSON" in errors
    assert "q2: " in errors and "HTTP 400" in errors and "prompt is too long" in errors
    assert "q3: " in errors and "no choices.0.message.content" in errors


@pytest.mark.parametrize("status, message", [(404, "wrong base URL or model name"), (401, "the API key was refused")])
def test_a_wrong_url_model_or_key_stops_at_once(scripted, tmp_path, status, message):
    server = scripted(lambda path, body, attempt: (status, b'{"error": "no"}', {}, 0))
    teacher = make_teacher("m", base_url=server.base_url, max_retries=3, backoff=1.0)
    with Store(tmp_path / "cache.sqlite") as store, pytest.raises(TeacherUnavailable, match=message):
        teach(teacher, QUESTIONS[:3], "toy", "cot", store)
    assert len(server.requests) <= 3  # no retries


def test_the_api_key_comes_from_the_environment_and_is_never_stored(scripted, tmp_path, monkeypatch):
    server = scripted(lambda path, body, attempt: (200, chat("Thus, the answer is (A)."), {}, 0))
    with pytest.raises(ValueError, match="environment variable TEACHER_KEY .* is not set"):
        make_teacher("m", base_url=server.base_url, api_key_env="TEACHER_KEY")
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-123")
    teacher = make_teacher("m", base_url=server.base_url, api_key_env="TEACHER_KEY")
    db = tmp_path / "cache.sqlite"
    with Store(db) as store:
        teach(teacher, QUESTIONS[:2], "toy", "cot", store)
    assert server.requests[0][2]["Authorization"] == "Bearer sk-secret-123"
    assert all(b"sk-secret-123" not in path.read_bytes() for path in tmp_path.glob("cache.sqlite*"))
    assert "sk-secret" not in teacher.identity


def test_without_echo_logprobs_scoring_falls_back_to_answers(scripted, tmp_path):
    def script(path, body, attempt):
        if body.get("echo"):  # like llama.cpp: logprobs of the generated token only
            return (
                200,
                json.dumps(
                    {
                        "choices": [
                            {
                                "index": i,
                                "text": p + " x",
                                "logprobs": {"tokens": [" x"], "token_logprobs": [-0.1], "text_offset": [len(p)]},
                            }
                            for i, p in enumerate(body["prompt"])
                        ]
                    }
                ).encode(),
                {},
                0,
            )
        return 200, chat("B"), {}, 0

    server = scripted(script)
    teacher = make_teacher("m", base_url=server.base_url)
    with Store(tmp_path / "cache.sqlite") as store:
        scores = teacher_choice_logprobs(teacher, QUESTIONS[:2], "toy", store)
    assert scores == {
        "q0": [float("-inf"), 0.0, float("-inf"), float("-inf")],
        "q1": [float("-inf"), 0.0, float("-inf"), float("-inf")],
    }


def test_base_urls_are_normalised():
    assert normalise_base_url("http://h:8000") == normalise_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    with pytest.raises(ValueError, match="http://host:port/v1"):
        normalise_base_url("h:8000")


def write_task(path, questions):
    path.write_text(
        "".join(
            json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.choices[q.answer]})
            + "\n"
            for q in questions
        )
    )
    return path


def test_teach_command_against_a_server(served_tiny_causal, tiny_causal, tmp_path):
    from typer.testing import CliRunner

    from tinystudent.cli import app

    task = write_task(tmp_path / "toy.jsonl", QUESTIONS[:10])
    args = [
        "teach",
        "--teacher",
        str(tiny_causal),
        "--task",
        str(task),
        "--split",
        "train",
        "--strategy",
        "teacher_forcing_cot",
        "--k-shots",
        "1",
        "--base-url",
        served_tiny_causal.base_url,
        "--endpoint",
        "completions",
        "--max-new-tokens",
        "8",
        "--json",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert (result["n"], result["generated"], result["cached"], result["failed"]) == (8, 8, 0, 0)
    again = json.loads(CliRunner().invoke(app, args).stdout.strip().splitlines()[-1])
    assert (again["generated"], again["cached"], again["model_calls"]) == (0, 8, 0)


def test_teach_command_reports_an_unavailable_server_in_one_line(scripted, tmp_path):
    from typer.testing import CliRunner

    from tinystudent.cli import app

    server = scripted(lambda path, body, attempt: (503, b"overloaded", {}, 0))
    task = write_task(tmp_path / "toy.jsonl", QUESTIONS[:10])
    result = CliRunner().invoke(
        app,
        ["teach", "--teacher", "m", "--task", str(task), "--base-url", server.base_url, "--max-retries", "0", "--json"],
    )
    assert result.exit_code == 2
    assert (
        "error:" in result.output
        and "HTTP 503: overloaded" in result.output
        and "run the same command again" in " ".join(result.output.split())
    )
    assert "Traceback" not in result.output


def test_teach_command_with_some_failures_exits_3_and_retries_only_them(scripted, tmp_path):
    """A 400 and an empty output fail their question only: exit code 3 (not 0, not a spurious
    'error: 1'), nothing cached for them, and the next run asks only for those two."""
    from typer.testing import CliRunner

    from tinystudent.cli import app
    from tinystudent.tasks import load_task

    task = write_task(tmp_path / "toy.jsonl", QUESTIONS[:10])
    first_two = [ex.question for ex in load_task(str(task)).split("train")[:2]]

    def script(path, body, attempt):
        prompt = body["messages"][0]["content"]
        if first_two[0] in prompt:
            return 400, b'{"error": {"message": "prompt is too long"}}', {}, 0
        if first_two[1] in prompt:
            return 200, chat("   "), {}, 0
        return 200, chat("Thus, the answer is (A)."), {}, 0

    server = scripted(script)
    args = [
        "teach",
        "--teacher",
        "m",
        "--task",
        str(task),
        "--split",
        "train",
        "--strategy",
        "cot",
        "--base-url",
        server.base_url,
        "--max-retries",
        "0",
        "--db",
        str(tmp_path / "c.sqlite"),
        "--json",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 3, first.output
    assert "error: " not in first.output and "2 of 8 questions failed" in " ".join(first.output.split())
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert (result["generated"], result["failed"]) == (6, 2)
    assert any("output was empty" in e for e in result["errors"])
    sent = len(server.requests)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 3 and len(server.requests) - sent == 2  # only the two failed questions


def test_timeout_is_a_deadline_for_the_whole_answer(tmp_path):
    """A server that sends its answer one byte at a time, each within the per-read timeout, is
    given up on when the whole answer is not there by the deadline."""
    body = chat("Thus, the answer is (A).")

    class Trickle(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        teacher = make_teacher(
            "m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", timeout=0.5, max_retries=0
        )
        started = time.monotonic()
        with (
            Store(tmp_path / "cache.sqlite") as store,
            pytest.raises(TeacherUnavailable, match="no answer within the 0.5 s timeout"),
        ):
            teach(teacher, QUESTIONS[:1], "toy", "cot", store)
        assert time.monotonic() - started < 2  # the whole body would take len(body) * 0.05 s
        assert len(body) * 0.05 > 3
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [400, 401])
def test_a_key_echoed_back_by_the_server_is_redacted_everywhere(scripted, tmp_path, monkeypatch, status):
    """A server quoting the bearer token in its error body: the key is not printed, not in the
    JSON summary and not in the database (the issue found it in a unit's log)."""
    from typer.testing import CliRunner

    from tinystudent.cli import app

    key = "sk-echo-me-4242"

    def script(path, body, attempt):
        return status, json.dumps({"error": {"message": f"bad request for key Bearer {key}"}}).encode(), {}, 0

    server = scripted(script)
    monkeypatch.setenv("ECHO_KEY", key)
    task = write_task(tmp_path / "toy.jsonl", QUESTIONS[:10])
    db = tmp_path / "c.sqlite"
    result = CliRunner().invoke(
        app,
        [
            "teach",
            "--teacher",
            "m",
            "--task",
            str(task),
            "--split",
            "train",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "ECHO_KEY",
            "--max-retries",
            "0",
            "--db",
            str(db),
            "--json",
        ],
    )
    assert server.requests and server.requests[0][2]["Authorization"] == f"Bearer {key}"
    assert result.exit_code == (1 if status == 400 else 2), result.output  # all failed / unavailable
    assert "[REDACTED]" in result.output
    assert key not in result.output and key not in (result.stderr or "")
    assert all(key.encode() not in path.read_bytes() for path in tmp_path.glob("c.sqlite*"))
