"""The OpenAI-compatible server over SmolLM2, driven by the production OpenAI backend over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from mwp.teachers.base import SamplingParams, TeacherError, TeacherRequest
from mwp.teachers.openai_compat import OpenAITeacher
from tests.servers.openai_server import OpenAICompatServer

pytestmark = pytest.mark.slow

REQUESTS = [
    TeacherRequest("a", "What is 12 plus 30?"),
    TeacherRequest("b", "Tom has 5 apples and eats 2. How many are left?"),
]


@pytest.fixture(scope="module")
def server(smollm2):
    with OpenAICompatServer(smollm2, port=0, served_model="smollm2") as running:
        yield running


def _client(server, **kwargs) -> OpenAITeacher:
    settings = {"api_key_required": False, "timeout_s": 120, "retry_base_s": 0.01, "max_retries": 1}
    settings.update(kwargs)
    return OpenAITeacher("smollm2", base_url=server.base_url, **settings)


def test_chat_n_samples_with_logprobs_match_the_local_model(server, smollm2):
    params = SamplingParams(n=3, temperature=0.8, max_tokens=12, top_logprobs=4, seed=21)
    client = _client(server, concurrency=2)
    served = {r.request.problem_id: r for r in client.generate(REQUESTS, params)}
    local = {r.request.problem_id: r for r in smollm2.generate(REQUESTS, params)}
    assert sorted(served) == ["a", "b"]
    for pid in served:
        assert len(served[pid].completions) == 3
        # same prompt, same per-sample seeds: the server answers exactly what the model does locally
        assert [c.text for c in served[pid].completions] == [c.text for c in local[pid].completions]
        for completion, mine in zip(served[pid].completions, local[pid].completions, strict=True):
            assert completion.logprobs is not None
            assert completion.logprobs.tokens == mine.logprobs.tokens
            assert completion.logprobs.logprobs == pytest.approx(mine.logprobs.logprobs, abs=1e-4)
            assert all(len(alts) == 4 for alts in completion.logprobs.top_tokens)
            assert completion.finish_reason in ("stop", "length")
    tokens = sum(len(c.logprobs.tokens) for r in served.values() for c in r.completions)
    assert client.usage.completion_tokens >= tokens
    assert client.usage.prompt_tokens > 0 and client.usage.calls == 2


def test_completions_endpoint_with_stop_sequences(server):
    client = _client(server, endpoint="completions")
    raw = [TeacherRequest("c", "Question: What is 2 plus 3?\nAnswer: The answer is")]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, stop=(".", "\n"), top_logprobs=2, seed=4)
    (response,) = list(client.generate(raw, params))
    assert len(response.completions) == 4
    for completion in response.completions:
        assert "." not in completion.text and "\n" not in completion.text
        if completion.logprobs is not None:
            assert "".join(completion.logprobs.tokens) == completion.text
    body = json.loads(
        server_post(
            server,
            "/v1/completions",
            {"model": "smollm2", "prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0},
        )
    )
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 4


def server_post(server, path: str, body: dict) -> str:
    root = server.base_url.rsplit("/v1", 1)[0]
    request = urllib.request.Request(
        root + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.read().decode()


def test_bad_requests_get_openai_style_errors(server):
    with pytest.raises(urllib.error.HTTPError) as caught:
        server_post(
            server,
            "/v1/chat/completions",
            {
                "model": "smollm2",
                "messages": [{"role": "user", "content": "hi"}],
                "logprobs": True,
                "top_logprobs": 30,
            },
        )
    assert caught.value.code == 400 and "top logprobs" in json.loads(caught.value.read())["error"]["message"]
    with pytest.raises(TeacherError, match="HTTP 404"):
        unknown = OpenAITeacher("gpt-4", base_url=server.base_url, api_key_required=False, max_retries=3)
        list(unknown.generate(REQUESTS[:1], SamplingParams()))
