"""The production OpenAI-compatible backend against scripted loopback servers (real HTTP)."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from mwp.teachers.base import SamplingParams, TeacherError, TeacherRequest
from mwp.teachers.openai_compat import OpenAITeacher
from tests.teachers.fault_server import echo_text


def _teacher(base_url: str, **kwargs) -> OpenAITeacher:
    settings = {"api_key_required": False, "retry_base_s": 0.01, "retry_max_s": 2.0, "timeout_s": 5.0}
    settings.update(kwargs)
    return OpenAITeacher("echo", base_url=base_url, **settings)


def _requests(count: int) -> list[TeacherRequest]:
    return [TeacherRequest(f"p{i}", f"Question {i}: what is {i} + {i}?") for i in range(count)]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_n_samples_with_top_logprobs(fault_server, endpoint):
    server = fault_server()
    teacher = _teacher(server.base_url, endpoint=endpoint)
    params = SamplingParams(n=3, temperature=0.8, top_logprobs=4)
    responses = list(teacher.generate(_requests(2), params))
    assert sorted(r.request.problem_id for r in responses) == ["p0", "p1"]
    calls = {json.dumps(c["body"].get("messages") or c["body"]["prompt"]): c["call"] for c in server.calls}
    for response in responses:
        prompt = response.request.prompt
        key = json.dumps([{"role": "user", "content": prompt}] if endpoint == "chat" else prompt)
        expected = [echo_text(prompt, k, calls[key]) for k in range(3)]
        assert [c.text for c in response.completions] == expected
        for completion in response.completions:
            lp = completion.logprobs
            assert lp is not None
            assert "".join(lp.tokens) == completion.text
            assert all(len(alts) == 4 for alts in lp.top_tokens)
            # the server ranks the chosen token first among the alternatives
            assert [alts[0] for alts in lp.top_tokens] == lp.tokens
            assert all(v[0] >= v[1] for v in lp.top_logprobs)
    body = server.calls[0]["body"]
    if endpoint == "chat":
        assert body["logprobs"] is True and body["top_logprobs"] == 4
    else:
        assert body["logprobs"] == 4
    assert body["n"] == 3 and body["temperature"] == 0.8


def test_stop_sequences_are_sent_and_honoured(fault_server):
    server = fault_server()
    teacher = _teacher(server.base_url)
    responses = list(teacher.generate(_requests(1), SamplingParams(n=2, stop=(" call", "xyz"))))
    assert server.calls[0]["body"]["stop"] == [" call", "xyz"]
    for completion in responses[0].completions:
        assert " call" not in completion.text
        assert completion.text.startswith("Echo ") and completion.text.endswith(
            f"sample {responses[0].completions.index(completion)}"
        )


def test_faults_are_retried_without_loss_or_duplicates(fault_server):
    faults = ["429ms", "500", "drop", "malformed", "partial", "503"]
    server = fault_server(faults=faults, retry_after_ms="10")
    teacher = _teacher(server.base_url, concurrency=2)
    responses = list(teacher.generate(_requests(5), SamplingParams(n=2)))
    ids = [r.request.problem_id for r in responses]
    assert sorted(ids) == [f"p{i}" for i in range(5)]  # nothing lost, nothing twice
    assert all(len(r.completions) == 2 for r in responses)
    texts = [c.text for r in responses for c in r.completions]
    assert len(set(texts)) == 10
    assert set(texts) <= set(server.served_texts)
    assert teacher.usage.retries == len(faults)
    assert teacher.usage.calls == 5
    assert server.ok_calls == 5


def test_retry_after_is_respected(fault_server):
    server = fault_server(faults=["429"], retry_after="1")
    teacher = _teacher(server.base_url)
    start = time.monotonic()
    responses = list(teacher.generate(_requests(1), SamplingParams()))
    assert time.monotonic() - start >= 0.95
    assert len(responses) == 1 and teacher.usage.retries == 1


def test_timeout_is_retried(fault_server):
    server = fault_server(faults=["slow"], slow_s=1.0)
    teacher = _teacher(server.base_url, timeout_s=0.3)
    responses = list(teacher.generate(_requests(1), SamplingParams()))
    assert len(responses) == 1 and len(responses[0].completions) == 1
    assert teacher.usage.retries == 1
    assert len(server.calls) == 2


def test_exhausted_retries_name_server_and_last_status(fault_server):
    server = fault_server(faults=["500"] * 10)
    teacher = _teacher(server.base_url, max_retries=2)
    with pytest.raises(TeacherError) as caught:
        list(teacher.generate(_requests(1), SamplingParams()))
    message = str(caught.value)
    assert server.base_url in message
    assert "HTTP 500" in message and "3 attempts" in message and "p0" in message
    assert len(server.calls) == 3


def test_client_errors_are_not_retried(fault_server):
    server = fault_server(faults=["400"])
    teacher = _teacher(server.base_url, max_retries=5)
    with pytest.raises(TeacherError, match="HTTP 400"):
        list(teacher.generate(_requests(1), SamplingParams()))
    assert len(server.calls) == 1


def test_on_error_skip_goes_on(fault_server):
    server = fault_server(faults=["500"])
    teacher = _teacher(server.base_url, max_retries=0, concurrency=1, on_error="skip")
    responses = list(teacher.generate(_requests(3), SamplingParams()))
    assert sorted(r.request.problem_id for r in responses) == ["p1", "p2"]
    assert teacher.usage.failed_calls == 1


def test_concurrency_limit_and_streaming(fault_server):
    server = fault_server(latency_s=0.2)
    teacher = _teacher(server.base_url, concurrency=3)
    start = time.monotonic()
    arrivals = []
    for _ in teacher.generate(_requests(9), SamplingParams()):
        arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 9
    assert server.max_in_flight == 3
    # responses are handed over as they complete, not all at the end
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_large_n_is_split_and_seeds_differ(fault_server):
    server = fault_server()
    teacher = _teacher(server.base_url, max_n_per_call=2)
    responses = list(teacher.generate(_requests(1), SamplingParams(n=5, seed=11)))
    assert len(responses[0].completions) == 5
    assert sorted(c["body"]["n"] for c in server.calls) == [1, 2, 2]
    assert sorted(c["body"]["seed"] for c in server.calls) == [11, 13, 15]


def test_usage_and_cost_ledger(fault_server, tmp_path):
    server = fault_server()
    teacher = _teacher(server.base_url, price_input_per_1m=2.0, price_output_per_1m=10.0)
    responses = list(teacher.generate(_requests(3), SamplingParams(n=2)))
    prompt_tokens = sum(len(r.request.prompt.split()) for r in responses)
    completion_tokens = sum(len(c.text.split()) for r in responses for c in r.completions)
    usage = teacher.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.samples) == (
        prompt_tokens,
        completion_tokens,
        6,
    )
    assert usage.cost_usd == pytest.approx((2.0 * prompt_tokens + 10.0 * completion_tokens) / 1e6)
    written = json.loads(usage.write(tmp_path / "usage.json").read_text())
    assert written["calls"] == 3 and written["cost_usd"] == pytest.approx(usage.cost_usd, abs=1e-6)


def test_api_key_from_env_is_sent_but_never_logged(fault_server, monkeypatch, caplog):
    secret = "sk-test-DO-NOT-LEAK-1234"
    monkeypatch.setenv("MWP_TEST_KEY", secret)
    server = fault_server(faults=["500", "500", "500"])
    teacher = _teacher(server.base_url, api_key_env="MWP_TEST_KEY", api_key_required=True, max_retries=2)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TeacherError) as caught:
        list(teacher.generate(_requests(1), SamplingParams()))
    assert server.authorization[0] == f"Bearer {secret}"
    assert secret not in caplog.text
    assert secret not in str(caught.value)
    assert secret not in repr(teacher)


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MWP_TEST_MISSING_KEY", raising=False)
    with pytest.raises(TeacherError, match="MWP_TEST_MISSING_KEY"):
        OpenAITeacher("gpt-4o-mini", api_key_env="MWP_TEST_MISSING_KEY")


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match=r"teacher\.endpoint"):
        OpenAITeacher("m", endpoint="embeddings", api_key_required=False)


# --- pre-flight: a server that cannot serve the run fails at once ----------------------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def _fails_fast(teacher: OpenAITeacher, match: str) -> str:
    start = time.monotonic()
    with pytest.raises(TeacherError, match=match) as info:
        list(teacher.generate(_requests(2), SamplingParams(n=2)))
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "\n" not in message and f"teacher.base_url={teacher.base_url}" in message
    return message


def test_connection_refused_fails_at_once_naming_base_url():
    # Default retries (8 attempts, up to 60 s apart) would take minutes against a closed port.
    teacher = OpenAITeacher("echo", base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key_required=False)
    _fails_fast(teacher, "cannot connect")


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_names_the_variable_never_the_key(fault_server, monkeypatch, status):
    monkeypatch.setenv("MWP_TEST_KEY", "sk-secret-123")
    server = fault_server(models_status=status)
    teacher = OpenAITeacher("echo", base_url=server.base_url, api_key_env="MWP_TEST_KEY")
    message = _fails_fast(teacher, rf"HTTP {status} on GET /models: the key in \$MWP_TEST_KEY was rejected")
    assert "sk-secret" not in message and server.model_lists == 1 and not server.calls


def test_wrong_endpoint_404_fails_at_once(fault_server):
    server = fault_server(models_status=404)
    teacher = OpenAITeacher("echo", base_url=server.base_url, api_key_required=False)
    _fails_fast(teacher, r"HTTP 404 on GET .*/models: no OpenAI-compatible API there")
    assert not server.calls


def test_a_busy_server_is_still_retried_after_the_check(fault_server):
    server = fault_server(faults=["503", "429ms"], models_status=503)
    teacher = _teacher(server.base_url)
    responses = list(teacher.generate(_requests(1), SamplingParams(n=1)))
    assert len(responses) == 1 and teacher.usage.retries == 2
    list(teacher.generate(_requests(1), SamplingParams(n=1)))
    assert server.model_lists == 1  # checked once per teacher, not per call


def test_preflight_can_be_turned_off(fault_server):
    server = fault_server(models_status=404)
    teacher = _teacher(server.base_url, preflight=False)
    assert len(list(teacher.generate(_requests(1), SamplingParams(n=1)))) == 1
    assert server.model_lists == 0
