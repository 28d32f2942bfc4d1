"""A teacher behind any OpenAI-compatible server: OpenAI itself, vLLM, llama.cpp, tests/servers/openai_server.py.

Requests go out concurrently on an asyncio loop that `generate` drives itself; responses are yielded
the moment they are complete, so the caller can store each at once. Rate limits (429), server errors
(5xx), timeouts, dropped connections and malformed bodies are retried with exponential backoff that
honours `Retry-After`; when the retries run out a TeacherError names the server and the last status.
The API key is read from the environment variable named by `api_key_env` and is never logged or stored.

How many calls are in flight adapts to the server (`CallLimit`): it starts at one, grows while the
latency per generated token holds, and halves on a timeout, a 429 or a 5xx, never above
`concurrency`. A server that works one request at a time (llama.cpp's server) is then kept a request
or two ahead instead of queueing `concurrency` requests until the last ones time out and are asked
again while the server still generates the abandoned ones (it does not stop on a disconnect).

`n` is checked on every response: servers that ignore it (llama.cpp's answers one choice) or cap it
return fewer choices than asked. The missing samples are asked for again, at most `max_topup_rounds`
times, each keeping its place (sample index and seed), and the rest of the run asks for no more per
call than the server gave; it is said once per run. Samples still missing after the top-ups leave the
problem's response short (what was received is kept and cached, the distill stage marks its output
incomplete, and the next run asks for the missing ones only), said once per run naming
`teacher.max_n_per_call`; a problem with no sample at all is a TeacherError.

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
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
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
# Adaptive concurrency: grow while the latency per generated token stays within GROW_RATIO of the
# fastest seen lately, shrink past SHRINK_RATIO (requests queue inside the server), and keep the
# slowest call under TIMEOUT_SHARE of timeout_s.
GROW_RATIO = 1.5
SHRINK_RATIO = 2.5
TIMEOUT_SHARE = 0.5
LATENCY_WINDOW = 64


@dataclass
class _Failure(Exception):
    status: str
    retryable: bool
    retry_after: float | None = None
    detail: str = ""
    # the server is saturated (timeout, 429, 5xx, refused): fewer calls in flight
    overload: bool = False
    timeout: bool = False


@dataclass
class _Call:
    started: float
    epoch: int
    in_flight: int  # calls in flight when this one was sent, itself included


class CallLimit:
    """How many calls may be in flight: `maximum`, or, adaptive, what the server keeps up with.

    Adaptive, it starts at 1 and grows by one per success (doubling per round trip) until the first
    sign of saturation, then by one per round trip. A call's latency per generated token, compared
    with the fastest seen, says whether the server works in parallel: the ratio stays near 1 for a
    batching server and grows with the queue for one that works a request at a time. It does not
    grow when one more call in flight would put the slowest recent call, scaled up as if the server
    were serial, past TIMEOUT_SHARE of the timeout. The limit shrinks (by a quarter) when that ratio
    passes SHRINK_RATIO or a call takes more than TIMEOUT_SHARE of the timeout, and halves on a
    timeout, 429 or 5xx, at most once per round trip.
    """

    def __init__(self, maximum: int, *, adaptive: bool = True, timeout_s: float = 120.0) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.timeout_s = timeout_s
        self.limit = 1.0 if adaptive else float(maximum)
        self.in_flight = 0
        self.max_in_flight = 0
        self.decreases = 0
        self.fastest: float | None = None  # seconds per generated token, the best seen
        self._recent: float | None = None  # the same, smoothed over the last calls
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)  # seconds per call, the last ones
        self._slow_start = True
        self._epoch = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._session = object()

    @property
    def allowed(self) -> int:
        return max(1, min(self.maximum, int(self.limit)))

    def bind(self) -> None:
        """Start on a new event loop (one per `generate`); what was learned is kept."""
        self._waiters.clear()
        self.in_flight = 0
        self._session = object()  # calls of an earlier loop, closed late, no longer count

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[_Call]:
        while self.in_flight >= self.allowed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake()  # a wake-up this task got goes to the next waiter
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        session = self._session
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield _Call(time.monotonic(), self._epoch, self.in_flight)
        finally:
            if session is self._session:
                self.in_flight -= 1
                self._wake()

    def _wake(self) -> None:
        free = self.allowed - self.in_flight
        for waiter in list(self._waiters):
            if free <= 0:
                return
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def succeeded(self, call: _Call, completion_tokens: int, choices: int) -> None:
        if not self.adaptive:
            return
        latency = time.monotonic() - call.started
        per_token = latency / max(completion_tokens / max(choices, 1), 1.0)
        self.fastest = per_token if self.fastest is None else min(self.fastest, per_token)
        self._recent = per_token if self._recent is None else 0.7 * self._recent + 0.3 * per_token
        self._latencies.append(latency)
        ratio = self._recent / max(self.fastest, 1e-9)
        budget = TIMEOUT_SHARE * self.timeout_s
        if latency > budget or ratio > SHRINK_RATIO:
            self._decrease(call, 0.75)
        elif (
            ratio <= GROW_RATIO
            and self.in_flight >= self.allowed  # grow only when the limit binds
            and max(self._latencies) * (self.allowed + 1) / self.allowed <= budget
        ):
            step = 1.0 if self._slow_start else 1.0 / self.limit
            self.limit = min(float(self.maximum), self.limit + step)
            self._wake()

    def overloaded(self, call: _Call) -> None:
        if self.adaptive:
            self._decrease(call, 0.5)

    def _decrease(self, call: _Call, factor: float) -> None:
        self._slow_start = False
        if call.epoch != self._epoch:  # a call sent before the last decrease says nothing new
            return
        self._epoch += 1
        lowered = max(1.0, self.limit * factor)
        if int(lowered) < int(self.limit):
            self.decreases += 1
            log.debug("concurrency limit %d -> %d", int(self.limit), int(lowered))
        self.limit = lowered

    def to_json(self) -> dict[str, Any]:
        return {
            "adaptive": self.adaptive,
            "maximum": self.maximum,
            "final": self.allowed,
            "max_in_flight": self.max_in_flight,
            "decreases": self.decreases,
        }


async def _all_or_none(calls: list[Any]) -> list[Any]:
    """The results of `calls` run together, in order; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((task for task in tasks if task in done and task.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _spans(indices: Sequence[int], per_call: int) -> list[tuple[int, int]]:
    """(first, size) calls covering sorted `indices`: runs of consecutive indices, at most `per_call` each."""
    spans: list[tuple[int, int]] = []
    for index in indices:
        if spans and spans[-1][0] + spans[-1][1] == index and spans[-1][1] < per_call:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((index, 1))
    return spans


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
        max_topup_rounds: int = 3,
        adaptive_concurrency: bool = True,
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
        if max_topup_rounds < 0:
            raise ValueError(f"teacher.max_topup_rounds must be >= 0, got {max_topup_rounds}")
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
        self.max_topup_rounds = max_topup_rounds
        self._warned_shortfall = False
        # the most choices one response gave when asked for more (None: n honoured so far)
        self.n_cap: int | None = None
        self.limit = CallLimit(concurrency, adaptive=adaptive_concurrency, timeout_s=timeout_s)
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
                self.usage.concurrency = self.limit.to_json()

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
        self.limit.bind()
        pending: set[asyncio.Task[TeacherResponse]] = set()
        todo = iter(requests)
        # requests started ahead of time (each waits for a call slot); bounds memory for huge runs
        window = self.limit.maximum * 2

        def refill() -> None:
            while len(pending) < window:
                request = next(todo, None)
                if request is None:
                    return
                pending.add(asyncio.ensure_future(self._request(client, request, params)))

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

    def per_call(self) -> int:
        """The most samples one call asks for: `max_n_per_call`, or less once the server gave fewer."""
        return min(self.max_n_per_call, self.n_cap or self.max_n_per_call)

    async def _request(self, client: Any, request: TeacherRequest, params: SamplingParams) -> TeacherResponse:
        # Sample i always has seed + i (a seeded server then repeats no sample) and comes back in
        # place i, so the completion cache stores it under index i whichever call delivered it.
        slots: list[Completion | None] = [None] * params.n
        calls = 0
        for round_ in range(self.max_topup_rounds + 1):
            chunks = _spans([i for i, c in enumerate(slots) if c is None], self.per_call())
            if not chunks:
                break
            if round_:
                self.usage.record_topup(len(chunks))
            calls += len(chunks)
            results = await _all_or_none(
                [self._call_with_retries(client, request, params, first, size) for first, size in chunks]
            )
            filled = 0
            for (first, size), completions in zip(chunks, results, strict=True):
                if len(completions) < size:
                    self._short(len(completions), size)
                for offset, completion in enumerate(completions[:size]):
                    slots[first + offset] = completion
                    filled += 1
            if not filled:
                break
        completions = [c for c in slots if c is not None]
        if len(completions) < params.n:
            message = (
                f"{self.base_url} ({self.endpoint}, model {self.model!r}) returned {len(completions)} of "
                f"{params.n} samples for problem {request.problem_id!r} in {calls} calls "
                f"({self.max_topup_rounds} top-up rounds): the server ignores or caps `n`; set "
                "teacher.max_n_per_call=1 to ask for one sample per call, or raise teacher.max_topup_rounds"
            )
            if not completions:
                self.usage.record_failure()
                raise TeacherError(message)
            if not self._warned_shortfall:
                self._warned_shortfall = True
                log.warning("%s; keeping the samples received (said once per run)", message)
        return TeacherResponse(request, completions)

    def _short(self, got: int, asked: int) -> None:
        """A response with fewer choices than asked: learn the server's cap; say so once per run."""
        self.usage.record_short()
        if got < 1 or (self.n_cap is not None and got >= self.n_cap):
            return
        first = self.n_cap is None
        self.n_cap = got
        if first:
            log.warning(
                "%s returned %d choice(s) for n=%d: the server ignores or caps `n`; asking for at most %d "
                "per call from now on and topping up the missing samples (teacher.max_n_per_call=%d "
                "does so from the start)",
                self.base_url,
                got,
                asked,
                got,
                got,
            )
        else:
            log.info("%s: at most %d choice(s) per call from now on", self.base_url, got)

    # -- one HTTP call -----------------------------------------------------------------------------
    def _body(self, request: TeacherRequest, params: SamplingParams, first: int, size: int) -> dict[str, Any]:
        return request_body(request, params, self.model, self.endpoint, first, size, self.max_tokens_param)

    async def _call_with_retries(
        self,
        client: Any,
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
            async with self.limit.slot() as call:
                try:
                    raw = await self._post(client, body)
                    completions = self._parse(raw, params)
                except _Failure as failure:
                    last = failure
                    if failure.overload:
                        self.limit.overloaded(call)
                    in_flight = call.in_flight
                else:
                    usage = raw.get("usage") or {}
                    self.limit.succeeded(call, int(usage.get("completion_tokens") or 0), len(completions))
                    return completions
            if not last.retryable:
                break
            where = f"{self.base_url}: {last.status} for problem {request.problem_id}"
            attempts = f"attempt {attempt + 1}/{self.max_retries + 1}"
            if last.timeout:
                self.usage.record_timeout()
                # The server may still be generating the abandoned call: the retry is work done twice.
                log.warning(
                    "%s, sent with %d request(s) in flight (%s); a server that works one request at a "
                    "time keeps generating abandoned ones: lower teacher.concurrency (at most %d now) or "
                    "raise teacher.timeout_s",
                    where,
                    in_flight,
                    attempts,
                    self.limit.allowed,
                )
            else:
                log.info("%s (%s)", where, attempts)
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
                overload=status in (408, 429) or status >= 500,
            ) from err
        except openai.APITimeoutError as err:
            raise _Failure(
                status=f"timeout after {self.timeout_s:g}s", retryable=True, overload=True, timeout=True
            ) from err
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise _Failure(
                status="connection error", retryable=True, detail=_short(repr(cause)), overload=True
            ) from err
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
    """Completions from a chat or completions response body (a dict), in choice order.

    Per token, at most `params.top_logprobs` alternatives are kept, the most likely first: llama.cpp's
    server adds the sampled token when it is outside the top k (k+1 alternatives).
    """
    choices = data["choices"]
    if not isinstance(choices, list):
        raise ValueError("`choices` is not a list")
    k = params.top_logprobs
    completions = []
    for choice in sorted(choices, key=lambda c: c.get("index") or 0):
        if endpoint == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            logprobs = _chat_logprobs(choice.get("logprobs"), k) if k else None
        else:
            text = choice.get("text") or ""
            logprobs = _completions_logprobs(choice.get("logprobs"), k) if k else None
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


def _top(alternatives: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    return sorted(alternatives, key=lambda alt: -alt[1])[:k]


def _chat_logprobs(block: dict[str, Any] | None, k: int) -> TokenLogprobs | None:
    content = (block or {}).get("content")
    if not content:
        return None
    ranked = [
        _top([(alt["token"], _number(alt.get("logprob"))) for alt in item.get("top_logprobs") or []], k)
        for item in content
    ]
    return TokenLogprobs(
        tokens=[item["token"] for item in content],
        logprobs=[_number(item.get("logprob")) for item in content],
        top_tokens=[[tok for tok, _ in alts] for alts in ranked],
        top_logprobs=[[lp for _, lp in alts] for alts in ranked],
    )


def _completions_logprobs(block: dict[str, Any] | None, k: int) -> TokenLogprobs | None:
    tokens = (block or {}).get("tokens")
    if not tokens:
        return None
    assert block is not None
    tops = block.get("top_logprobs") or [{} for _ in tokens]
    ranked = [_top([(tok, _number(lp)) for tok, lp in (d or {}).items()], k) for d in tops]
    return TokenLogprobs(
        tokens=list(tokens),
        logprobs=[_number(v) for v in block.get("token_logprobs") or []],
        top_tokens=[[tok for tok, _ in alts] for alts in ranked],
        top_logprobs=[[lp for _, lp in alts] for alts in ranked],
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
