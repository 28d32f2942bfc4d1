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


# --- `n` honoured or refused: servers that ignore or cap it -----------------------------------------


def test_a_server_that_caps_n_is_topped_up_in_place_and_said_once(fault_server, caplog):
    server = fault_server(max_n=2)
    teacher = _teacher(server.base_url, concurrency=1)
    caplog.set_level(logging.INFO, logger="mwp.teachers.openai_compat")
    responses = list(teacher.generate(_requests(3), SamplingParams(n=5, seed=11)))
    assert all(len(r.completions) == 5 for r in responses)
    texts = [c.text for r in responses for c in r.completions]
    assert len(set(texts)) == 15 and set(texts) <= set(server.served_texts)
    asked: dict[str, list[tuple[int, int]]] = {}
    for call in server.calls:
        prompt = call["body"]["messages"][-1]["content"]
        asked.setdefault(prompt, []).append((call["body"]["n"], call["body"]["seed"]))
    # the first call learns the cap (5 asked, 2 given); slots 2-4 are asked for two at a time, each
    # slot with its own seed. p1 was planned before the cap was known; p2, started later, asks for 2.
    prompts = [r.prompt for r in _requests(3)]
    assert asked[prompts[0]] == [(5, 11), (2, 13), (1, 15)]
    assert asked[prompts[2]] == [(2, 11), (2, 13), (1, 15)]
    assert len(server.calls) == 9
    # sample i comes from the call for slot i: the echo names the sample within its call
    first = next(r for r in responses if r.request.problem_id == "p0").completions
    assert [c.text.split(" sample ")[1].split(" ")[0] for c in first] == ["0", "1", "0", "1", "0"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "caps `n`" in r.message]
    assert len(warnings) == 1
    assert (
        "returned 2 choice(s) for n=5" in warnings[0].message
        and "teacher.max_n_per_call" in warnings[0].message
    )
    # p0 and p1 were short once each and topped up with two calls each; p2 asked right the first time
    assert teacher.usage.short_calls == 2 and teacher.usage.topup_calls == 4
    assert teacher.usage.samples == 15


def test_one_sample_per_call_from_the_start_asks_nothing_twice(fault_server, caplog):
    server = fault_server(max_n=1)
    teacher = _teacher(server.base_url, max_n_per_call=1)
    caplog.set_level(logging.WARNING)
    responses = list(teacher.generate(_requests(2), SamplingParams(n=3, seed=0)))
    assert all(len(r.completions) == 3 for r in responses)
    assert [c["body"]["n"] for c in server.calls] == [1] * 6
    assert sorted(c["body"]["seed"] for c in server.calls) == [0, 0, 1, 1, 2, 2]
    assert teacher.usage.short_calls == 0 and "caps `n`" not in caplog.text


def test_a_remaining_shortfall_keeps_what_was_received_and_names_server_and_setting(fault_server, caplog):
    server = fault_server(max_n=1)
    teacher = _teacher(server.base_url, max_topup_rounds=0)
    with caplog.at_level(logging.WARNING):
        responses = list(teacher.generate(_requests(2), SamplingParams(n=4)))
    assert [len(r.completions) for r in responses] == [1, 1]
    warnings = [r.getMessage() for r in caplog.records if "samples for problem" in r.getMessage()]
    assert len(warnings) == 1, "said once per run, not once per problem"
    assert server.base_url in warnings[0] and "returned 1 of 4 samples" in warnings[0]
    assert "teacher.max_n_per_call=1" in warnings[0] and "teacher.max_topup_rounds" in warnings[0]
    assert len(server.calls) == 2 and teacher.usage.failed_calls == 0


def test_an_empty_answer_is_a_shortfall_error_not_a_short_artifact(fault_server):
    server = fault_server(max_n=0)
    teacher = _teacher(server.base_url)
    with pytest.raises(TeacherError) as caught:
        list(teacher.generate(_requests(1), SamplingParams(n=2)))
    message = str(caught.value)
    assert server.base_url in message and "returned 0 of 2 samples" in message
    assert "teacher.max_n_per_call=1" in message and "'p0'" in message
    # one call, and no top-up round after a round that filled nothing
    assert len(server.calls) == 1


def test_top_ups_go_through_the_completion_cache_under_stable_indices(fault_server, tmp_path):
    from mwp.teachers.completion_cache import CachedTeacher, CompletionCache, request_key

    server = fault_server(max_n=1)
    params = SamplingParams(n=4, temperature=0.7)
    with CachedTeacher(_teacher(server.base_url), tmp_path / "cache.jsonl") as teacher:
        first = list(teacher.generate(_requests(2), params))
    assert all(len(r.completions) == 4 for r in first)
    store = CompletionCache(tmp_path / "cache.jsonl")
    for response in first:
        key = request_key("openai:chat:echo", response.request, params)
        stored = store.get(key)
        assert sorted(stored) == [0, 1, 2, 3]
        assert [stored[i].text for i in range(4)] == [c.text for c in response.completions]
    calls = len(server.calls)
    with CachedTeacher(_teacher(server.base_url), tmp_path / "cache.jsonl") as teacher:
        again = list(teacher.generate(_requests(2), params))
    assert len(server.calls) == calls
    assert [c.text for r in again for c in r.completions] == [c.text for r in first for c in r.completions]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_extra_alternatives_are_trimmed_to_the_k_asked_for(endpoint):
    from mwp.teachers.openai_compat import completions_from_body

    # llama.cpp adds the sampled token when it is outside the top k: k+1 alternatives
    alternatives = {"a": -0.5, "b": -1.0, "c": -2.0, "picked": -3.5}
    if endpoint == "chat":
        item = {
            "token": "picked",
            "logprob": -3.5,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives.items()],
        }
        choice = {"index": 0, "message": {"content": "picked"}, "logprobs": {"content": [item]}}
    else:
        block = {"tokens": ["picked"], "token_logprobs": [-3.5], "top_logprobs": [alternatives]}
        choice = {"index": 0, "text": "picked", "logprobs": block}
    (completion,) = completions_from_body({"choices": [choice]}, endpoint, SamplingParams(top_logprobs=3))
    assert completion.logprobs is not None
    assert completion.logprobs.top_tokens == [["a", "b", "c"]]
    assert completion.logprobs.top_logprobs == [[-0.5, -1.0, -2.0]]
    assert completion.logprobs.logprobs == [-3.5]


# --- capacity: timeouts must not multiply work ------------------------------------------------------


def test_fixed_concurrency_against_a_serial_server_times_out_and_asks_twice(fault_server, caplog):
    # 6 requests of 0.15 s queued at once: the last ones wait up to 0.9 s > timeout 0.5 s and are
    # asked again while the server, which finishes abandoned requests, still works on them.
    server = fault_server(latency_s=0.15, serial=True)
    teacher = _teacher(
        server.base_url,
        concurrency=6,
        adaptive_concurrency=False,
        timeout_s=0.5,
        max_retries=1,
        on_error="skip",
    )
    caplog.set_level(logging.WARNING, logger="mwp.teachers.openai_compat")
    responses = list(teacher.generate(_requests(6), SamplingParams()))
    assert teacher.usage.timeouts > 0 and len(server.calls) > len(responses)
    timeout_logs = [r.message for r in caplog.records if "in flight" in r.message]
    assert len(timeout_logs) == teacher.usage.timeouts
    assert "timeout after 0.5s" in timeout_logs[0] and "teacher.concurrency" in timeout_logs[0]
    assert "teacher.timeout_s" in timeout_logs[0]
    in_flight = int(timeout_logs[0].split("sent with ")[1].split(" request")[0])
    assert 2 <= in_flight <= 6


def test_adaptive_concurrency_keeps_a_serial_server_out_of_timeouts(fault_server):
    server = fault_server(latency_s=0.15, serial=True)
    teacher = _teacher(server.base_url, concurrency=6, timeout_s=0.5)
    responses = list(teacher.generate(_requests(12), SamplingParams()))
    assert len(responses) == 12
    assert teacher.usage.timeouts == 0 and teacher.usage.retries == 0
    assert len(server.calls) == 12  # nothing asked twice
    assert server.max_in_flight <= 3
    assert teacher.usage.concurrency is not None and teacher.usage.concurrency["max_in_flight"] <= 3


def test_adaptive_concurrency_grows_to_the_maximum_while_latency_holds(fault_server):
    server = fault_server(latency_s=0.05)
    teacher = _teacher(server.base_url, concurrency=8)
    list(teacher.generate(_requests(40), SamplingParams()))
    assert server.max_in_flight == 8 and teacher.limit.allowed == 8


def test_overload_halves_the_limit(fault_server):
    server = fault_server(faults=["503"] * 2, latency_s=0.02)
    teacher = _teacher(server.base_url, concurrency=8, max_retries=3)
    teacher.limit.limit = 8.0
    list(teacher.generate(_requests(1), SamplingParams()))
    # each 503 came from a call sent after the previous halving, so each halves (8 -> 4 -> 2)
    assert teacher.limit.allowed == 2 and teacher.limit.decreases == 2


def test_a_failed_call_cancels_the_other_calls_of_its_problem(fault_server, caplog):
    import gc

    # two one-sample calls for one problem, served one after the other; the first is refused
    server = fault_server(faults=["400"], latency_s=0.5, serial=True)
    teacher = _teacher(server.base_url, max_n_per_call=1, concurrency=2, adaptive_concurrency=False)
    caplog.set_level(logging.ERROR, logger="asyncio")
    start = time.monotonic()
    with pytest.raises(TeacherError, match="HTTP 400"):
        list(teacher.generate(_requests(1), SamplingParams(n=2)))
    assert time.monotonic() - start < 0.95  # the second call (done at ~1.0 s) was not waited for
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_the_limit_does_not_grow_past_what_the_timeout_allows(fault_server):
    # 0.3 s per call, timeout 0.8 s: a second call queued behind the first would take 0.6 s, more
    # than half the timeout, although the latency per token holds while one call is in flight
    server = fault_server(latency_s=0.3, serial=True)
    teacher = _teacher(server.base_url, concurrency=8, timeout_s=0.8)
    list(teacher.generate(_requests(6), SamplingParams()))
    assert server.max_in_flight == 1 and teacher.limit.allowed == 1
    assert teacher.usage.timeouts == 0 and len(server.calls) == 6


def test_a_stream_closed_late_does_not_unbalance_the_next_one(fault_server):
    server = fault_server(latency_s=0.05)
    teacher = _teacher(server.base_url, concurrency=4, adaptive_concurrency=False)
    first = teacher.generate(_requests(8), SamplingParams())
    next(first)  # the other calls of this stream stay in flight on its own loop
    assert len(list(teacher.generate(_requests(3), SamplingParams()))) == 3
    first.close()  # cancels them: their slots belong to the first stream, not the second
    assert teacher.limit.in_flight == 0
