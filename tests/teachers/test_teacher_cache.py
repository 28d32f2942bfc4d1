"""CachedTeacher and its append-only store, over the production OpenAI backend and a loopback server."""

from __future__ import annotations

import json

import pytest

from mwp.teachers.base import Completion, SamplingParams, TeacherRequest
from mwp.teachers.completion_cache import CachedTeacher, CompletionCache, request_key, with_cache
from mwp.teachers.openai_compat import OpenAITeacher


def _inner(base_url: str) -> OpenAITeacher:
    return OpenAITeacher("echo", base_url=base_url, api_key_required=False, retry_base_s=0.01)


def _requests(count: int) -> list[TeacherRequest]:
    return [TeacherRequest(f"p{i}", f"Question {i}?") for i in range(count)]


def _texts(responses) -> dict[str, list[str]]:
    return {r.request.problem_id: [c.text for c in r.completions] for r in responses}


def test_warm_cache_makes_no_calls(fault_server, tmp_path):
    server = fault_server()
    params = SamplingParams(n=3, temperature=0.7, top_logprobs=2)
    with CachedTeacher(_inner(server.base_url), tmp_path / "cache.jsonl") as teacher:
        cold = _texts(teacher.generate(_requests(5), params))
    assert len(server.calls) == 5
    with CachedTeacher(_inner(server.base_url), tmp_path / "cache.jsonl") as teacher:
        warm_responses = list(teacher.generate(_requests(5), params))
        assert teacher.usage.cached_samples == 15
    assert len(server.calls) == 5
    assert _texts(warm_responses) == cold
    assert all(c.logprobs is not None for r in warm_responses for c in r.completions)


def test_only_missing_samples_are_requested(fault_server, tmp_path):
    server = fault_server()
    path = tmp_path / "cache.jsonl"
    with CachedTeacher(_inner(server.base_url), path) as teacher:
        first = _texts(teacher.generate(_requests(2), SamplingParams(n=3, seed=5)))
    with CachedTeacher(_inner(server.base_url), path) as teacher:
        more = _texts(teacher.generate(_requests(2), SamplingParams(n=8, seed=5)))
    later_calls = server.calls[2:]
    assert [c["body"]["n"] for c in later_calls] == [5, 5]
    # a seeded API must not be asked the same (prompt, seed) again: it would repeat samples 0..4
    assert all(c["body"]["seed"] != 5 for c in later_calls)
    for pid in ("p0", "p1"):
        assert more[pid][:3] == first[pid]
        assert len(more[pid]) == 8 and len(set(more[pid])) == 8


def test_different_sampling_parameters_do_not_share_samples(fault_server, tmp_path):
    server = fault_server()
    with CachedTeacher(_inner(server.base_url), tmp_path / "c.jsonl") as teacher:
        list(teacher.generate(_requests(1), SamplingParams(n=2, temperature=0.5)))
        list(teacher.generate(_requests(1), SamplingParams(n=2, temperature=0.9)))
        list(teacher.generate(_requests(1), SamplingParams(n=1, temperature=0.9)))
    assert len(server.calls) == 2


def test_duplicate_prompts_are_asked_once(fault_server, tmp_path):
    server = fault_server()
    same = [TeacherRequest("a", "Same question?"), TeacherRequest("b", "Same question?")]
    with CachedTeacher(_inner(server.base_url), tmp_path / "c.jsonl") as teacher:
        responses = list(teacher.generate(same, SamplingParams(n=2)))
    assert len(server.calls) == 1
    assert sorted(r.request.problem_id for r in responses) == ["a", "b"]
    assert responses[0].completions == responses[1].completions


def test_torn_last_line_is_dropped_and_appends_continue(fault_server, tmp_path):
    server = fault_server()
    path = tmp_path / "cache.jsonl"
    params = SamplingParams(n=2)
    with CachedTeacher(_inner(server.base_url), path) as teacher:
        list(teacher.generate(_requests(3), params))
    complete = path.read_bytes()
    last_newline = complete.rstrip(b"\n").rfind(b"\n") + 1
    # a writer killed half-way through its line
    path.write_bytes(complete[: last_newline + 25])
    with CachedTeacher(_inner(server.base_url), path) as teacher:
        assert len(teacher.cache) == 4  # two of three entries survive
        responses = list(teacher.generate(_requests(3), params))
    assert len(server.calls) == 4  # only the torn entry was asked again
    assert len(responses) == 3
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3
    assert CompletionCache(path).duplicate_samples == 0


def test_corruption_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    good = json.dumps({"key": "k", "indices": [0], "completions": [{"text": "a"}]})
    path.write_text(f"{good}\nnot json at all\n{good}\n")
    with pytest.raises(ValueError, match=r"cache\.jsonl:2"):
        CompletionCache(path)


def test_request_key_ignores_n_but_not_prompt_or_model():
    request = TeacherRequest("p", "Q?")
    assert request_key("m", request, SamplingParams(n=1)) == request_key("m", request, SamplingParams(n=9))
    assert request_key("m", request, SamplingParams()) != request_key("m2", request, SamplingParams())
    other = TeacherRequest("p", "Q?", system="Be brief.")
    assert request_key("m", request, SamplingParams()) != request_key("m", other, SamplingParams())
    assert request_key("m", request, SamplingParams(seed=1)) != request_key(
        "m", request, SamplingParams(seed=2)
    )


def test_with_cache_follows_config(fault_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MWP_CACHE_DIR", str(tmp_path))
    inner = _inner(fault_server().base_url)
    assert with_cache(inner, {"cache": False}) is inner
    wrapped = with_cache(inner, {})
    assert isinstance(wrapped, CachedTeacher)
    assert wrapped.cache.path == tmp_path / "teacher" / "echo.jsonl"
    explicit = with_cache(inner, {"cache_path": str(tmp_path / "x" / "mine.jsonl")})
    assert explicit.cache.path == tmp_path / "x" / "mine.jsonl"
    wrapped.close()
    explicit.close()


def test_damage_inside_an_indexed_line_is_reported_when_read(tmp_path):
    path = tmp_path / "cache.jsonl"
    store = CompletionCache(path)
    key = "a" * 64
    store.put(key, [0, 1], [Completion("first"), Completion("second")], "p")
    store.close()
    line = path.read_text()
    path.write_text(line.replace('"second"', '"sec'))  # the index prefix survives, the body does not
    damaged = CompletionCache(path)
    assert damaged.indices(key) == {0, 1}
    with pytest.raises(ValueError, match=r"cache\.jsonl:1"):
        damaged.get(key)
