"""A teacher behind any OpenAI-compatible server: OpenAI itself, vLLM, llama.cpp, tests/servers/openai_server.py.

Requests go out concurrently (up to `concurrency` HTTP calls in flight) on an asyncio loop that
`generate` drives itself; responses are yielded the moment they are complete, so the caller can
store each at once. Rate limits (429), server errors (5xx), timeouts, dropped connections and
malformed bodies are retried with exponential backoff that honours `Retry-After`; when the retries
run out a TeacherError names the server and the last status. The API key is read from the
environment variable named by `api_key_env` and is never logged or stored.

Before the first request, one `GET /models` checks that the server is there at all: a wrong
`base_url` (connection refused, 404) or a rejected key (401/403) fails at once with a one-line error
instead of minutes of backoff. Only an answer that no retry can fix fails it; a busy server
(429, 5xx, a timeout) is left to the run's own retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mwp.data.artifact import TokenLogprobs
from mwp.teachers.base import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
    cut_at_stop,
)
from mwp.teachers.usage import UsageLedger

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
OPENAI_URL = "https://api.openai.com/v1"
# A logprob the server left out (null); JSON has no -inf.
MISSING_LOGPROB = -9999.0
# The pre-flight GET /models waits at most this long: it is a liveness check, not a request.
PREFLIGHT_TIMEOUT_S = 10.0


@dataclass
class _Failure(Exception):
    status: str
    retryable: bool
    retry_after: float | None = None
    detail: str = ""


class OpenAITeacher(Teacher):
    """Chat or completions endpoint of an OpenAI-compatible server (config: conf/teacher/openai.yaml)."""

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        base_url: str | None = None,
        endpoint: str = "chat",
        api_key_env: str | None = "OPENAI_API_KEY",
        api_key_required: bool = True,
        concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 8,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        on_error: str = "raise",
        max_n_per_call: int = 128,
        max_tokens_param: str = "max_tokens",
        price_input_per_1m: float = 0.0,
        price_output_per_1m: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        preflight: bool = True,
    ) -> None:
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"teacher.endpoint must be 'chat' or 'completions', got {endpoint!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"teacher.on_error must be 'raise' or 'skip', got {on_error!r}")
        if concurrency < 1:
            raise ValueError(f"teacher.concurrency must be >= 1, got {concurrency}")
        if max_n_per_call < 1:
            raise ValueError(f"teacher.max_n_per_call must be >= 1, got {max_n_per_call}")
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"teacher.max_tokens_param must be max_tokens or max_completion_tokens, got {max_tokens_param!r}"
            )
        if not model:
            raise ValueError("teacher.model is empty: name the served model (e.g. teacher.model=gpt-4o-mini)")
        self.model = model
        self.name = name or model
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        self.endpoint = endpoint
        self.identity = f"openai:{endpoint}:{model}"
        self.api_key_env = api_key_env
        self.api_key_required = api_key_required
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.on_error = on_error
        self.max_n_per_call = max_n_per_call
        self.max_tokens_param = max_tokens_param
        self.extra_body = dict(extra_body or {})
        self.preflight = preflight
        self._checked = False
        self.usage = UsageLedger(
            price_input_per_1m=price_input_per_1m, price_output_per_1m=price_output_per_1m
        )
        self.failed_requests: list[tuple[str, str]] = []  # (problem id, reason) with on_error=skip
        self._api_key()  # fail at construction, not after the first batch of problems

    def __repr__(self) -> str:
        return f"OpenAITeacher(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.endpoint!r})"

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            return key
        if self.api_key_required:
            raise TeacherError(
                f"teacher.api_key_env={self.api_key_env!r}: that environment variable is not set "
                f"(needed for {self.base_url}; set teacher.api_key_required=false for a server without keys)"
            )
        return "EMPTY"

    # -- the sync interface ------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        if not requests:
            return
        loop = asyncio.new_event_loop()
        client = self._client()
        stream = self._agenerate(client, requests, params)
        try:
            if self.preflight and not self._checked:
                loop.run_until_complete(self._check(client))
                self._checked = True
            while True:
                try:
                    response = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    break
                yield response
        finally:
            try:
                loop.run_until_complete(stream.aclose())
                loop.run_until_complete(client.close())
            finally:
                loop.close()

    def check(self) -> None:
        """Fail now, with one line naming teacher.base_url, if the server cannot serve this run at all."""
        loop = asyncio.new_event_loop()
        client = self._client()
        try:
            loop.run_until_complete(self._check(client))
            self._checked = True
        finally:
            try:
                loop.run_until_complete(client.close())
            finally:
                loop.close()

    async def _check(self, client: Any) -> None:
        import openai

        where = f"teacher.base_url={self.base_url}"
        try:
            await client.models.list(timeout=min(self.timeout_s, PREFLIGHT_TIMEOUT_S))
        except openai.APIStatusError as err:
            status = err.status_code
            if status in (401, 403):
                # The server's message may echo (part of) the key: leave it out.
                key = f"the key in ${self.api_key_env}" if self.api_key_env else "the request"
                raise TeacherError(
                    f"{where}: HTTP {status} on GET /models: {key} was rejected (set teacher.api_key_env "
                    "to the variable holding a valid key)"
                ) from None
            if status == 404:
                raise TeacherError(
                    f"{where}: HTTP 404 on GET {self.base_url}/models: no OpenAI-compatible API there "
                    "(base_url should be the API root, e.g. http://host:8000/v1)"
                ) from None
            log.warning("%s: GET /models answered HTTP %d; sampling anyway (retries apply)", where, status)
        except openai.APITimeoutError:
            log.warning("%s: GET /models timed out; sampling anyway (retries apply)", where)
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise TeacherError(
                f"{where}: cannot connect ({_short(str(cause) or type(cause).__name__, 160)}); "
                "is the server running and the URL right?"
            ) from None

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        # Retries are ours (with Retry-After and a clear final error), so the client makes none.
        return AsyncOpenAI(
            api_key=self._api_key(), base_url=self.base_url, max_retries=0, timeout=self.timeout_s
        )

    async def _agenerate(
        self, client: Any, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> AsyncIterator[TeacherResponse]:
        calls = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task[TeacherResponse]] = set()
        todo = iter(requests)
        window = self.concurrency * 2  # requests started ahead of time; bounds memory for huge runs

        def refill() -> None:
            while len(pending) < window:
                request = next(todo, None)
                if request is None:
                    return
                pending.add(asyncio.ensure_future(self._request(client, calls, request, params)))

        try:
            refill()
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.difference_update(done)
                failure: BaseException | None = None
                for task in done:
                    error = task.exception()
                    if error is None:
                        yield task.result()
                    elif isinstance(error, TeacherError) and self.on_error == "skip":
                        log.warning("%s", error)
                    elif failure is None:
                        failure = error
                if failure is not None:
                    raise failure
                refill()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _request(
        self, client: Any, calls: asyncio.Semaphore, request: TeacherRequest, params: SamplingParams
    ) -> TeacherResponse:
        chunks = []
        start = 0
        while start < params.n:
            size = min(self.max_n_per_call, params.n - start)
            chunks.append((start, size))
            start += size
        results = await asyncio.gather(
            *(self._call_with_retries(client, calls, request, params, first, size) for first, size in chunks)
        )
        completions = [c for part in results for c in part]
        return TeacherResponse(request, completions)

    # -- one HTTP call -----------------------------------------------------------------------------
    def _body(self, request: TeacherRequest, params: SamplingParams, first: int, size: int) -> dict[str, Any]:
        return request_body(request, params, self.model, self.endpoint, first, size, self.max_tokens_param)

    async def _call_with_retries(
        self,
        client: Any,
        calls: asyncio.Semaphore,
        request: TeacherRequest,
        params: SamplingParams,
        first: int,
        size: int,
    ) -> list[Completion]:
        body = self._body(request, params, first, size)
        last: _Failure | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.record_retry()
                await asyncio.sleep(self._wait_s(attempt, last))
            try:
                async with calls:
                    raw = await self._post(client, body)
                return self._parse(raw, params)
            except _Failure as failure:
                last = failure
                if not failure.retryable:
                    break
                log.info(
                    "%s: %s for problem %s (attempt %d/%d)",
                    self.base_url,
                    failure.status,
                    request.problem_id,
                    attempt + 1,
                    self.max_retries + 1,
                )
        assert last is not None
        self.usage.record_failure()
        gave_up = "not retryable" if not last.retryable else f"after {self.max_retries + 1} attempts"
        raise TeacherError(
            f"{self.base_url} ({self.endpoint}, model {self.model!r}) failed for problem {request.problem_id!r} "
            f"{gave_up}; last status: {last.status}{': ' + last.detail if last.detail else ''}"
        )

    def _wait_s(self, attempt: int, last: _Failure | None) -> float:
        backoff = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if last is not None and last.retry_after is not None:
            return max(backoff, min(last.retry_after, self.retry_max_s))
        return backoff

    async def _post(self, client: Any, body: dict[str, Any]) -> Any:
        import openai

        resource = client.chat.completions if self.endpoint == "chat" else client.completions
        # The raw body, parsed here: skips building response models we would only turn back into dicts.
        create = resource.with_raw_response.create
        kwargs = dict(body)
        extra = dict(self.extra_body)
        # Keys the client does not know (vLLM's top_k, ...) travel in extra_body.
        try:
            raw = await create(**kwargs, extra_body=extra or None)
            data = json.loads(raw.content)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            return data
        except openai.APIStatusError as err:
            status = err.status_code
            raise _Failure(
                status=f"HTTP {status}",
                retryable=status in RETRYABLE_STATUS,
                retry_after=_retry_after_s(err.response.headers),
                detail=_short(err.message),
            ) from err
        except openai.APITimeoutError as err:
            raise _Failure(status=f"timeout after {self.timeout_s:g}s", retryable=True) from err
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise _Failure(status="connection error", retryable=True, detail=_short(repr(cause))) from err
        except (ValueError, openai.APIResponseValidationError) as err:
            raise _Failure(status="malformed response", retryable=True, detail=_short(str(err))) from err

    def _parse(self, raw: Any, params: SamplingParams) -> list[Completion]:
        data = raw
        try:
            completions = completions_from_body(data, self.endpoint, params)
        except (AttributeError, TypeError, ValueError, KeyError) as err:
            raise _Failure(status="malformed response", retryable=True, detail=_short(repr(err))) from err
        usage = data.get("usage") or {}
        self.usage.record_call(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            samples=len(completions),
        )
        return completions


def request_body(
    request: TeacherRequest,
    params: SamplingParams,
    model: str,
    endpoint: str = "chat",
    first: int = 0,
    size: int | None = None,
    max_tokens_param: str = "max_tokens",
) -> dict[str, Any]:
    """The JSON body of one chat or completions call asking for `size` samples (default n)."""
    body: dict[str, Any] = {
        "model": model,
        "n": params.n if size is None else size,
        "temperature": params.temperature,
        "top_p": params.top_p,
        max_tokens_param: params.max_tokens,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed + first  # chunks of one prompt must not repeat each other
    if endpoint == "chat":
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body["messages"] = messages
        if params.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
    else:
        body["prompt"] = f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
        if params.top_logprobs:
            body["logprobs"] = params.top_logprobs
    return body


def completions_from_body(data: dict[str, Any], endpoint: str, params: SamplingParams) -> list[Completion]:
    """Completions from a chat or completions response body (a dict), in choice order."""
    choices = data["choices"]
    if not isinstance(choices, list):
        raise ValueError("`choices` is not a list")
    completions = []
    for choice in sorted(choices, key=lambda c: c.get("index") or 0):
        if endpoint == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            logprobs = _chat_logprobs(choice.get("logprobs")) if params.top_logprobs else None
        else:
            text = choice.get("text") or ""
            logprobs = _completions_logprobs(choice.get("logprobs")) if params.top_logprobs else None
        if not isinstance(text, str):
            raise ValueError("completion text is not a string")
        # Servers may accept fewer stop sequences than asked (OpenAI: 4); cut the rest here.
        completions.append(
            Completion(
                text=cut_at_stop(text, params.stop),
                finish_reason=choice.get("finish_reason"),
                logprobs=logprobs,
            )
        )
    return completions


def _number(value: Any) -> float:
    return MISSING_LOGPROB if value is None else float(value)


def _chat_logprobs(block: dict[str, Any] | None) -> TokenLogprobs | None:
    content = (block or {}).get("content")
    if not content:
        return None
    return TokenLogprobs(
        tokens=[item["token"] for item in content],
        logprobs=[_number(item.get("logprob")) for item in content],
        top_tokens=[[alt["token"] for alt in item.get("top_logprobs") or []] for item in content],
        top_logprobs=[
            [_number(alt.get("logprob")) for alt in item.get("top_logprobs") or []] for item in content
        ],
    )


def _completions_logprobs(block: dict[str, Any] | None) -> TokenLogprobs | None:
    tokens = (block or {}).get("tokens")
    if not tokens:
        return None
    assert block is not None
    tops = block.get("top_logprobs") or [{} for _ in tokens]
    ranked = [sorted((d or {}).items(), key=lambda kv: -_number(kv[1])) for d in tops]
    return TokenLogprobs(
        tokens=list(tokens),
        logprobs=[_number(v) for v in block.get("token_logprobs") or []],
        top_tokens=[[tok for tok, _ in alts] for alts in ranked],
        top_logprobs=[[_number(lp) for _, lp in alts] for alts in ranked],
    )


def _retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, else `Retry-After` (seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"
