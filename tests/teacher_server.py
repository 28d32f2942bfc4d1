"""An OpenAI-compatible chat server on 127.0.0.1 that solves a dataset's problems, and misbehaves on demand.

Its completions end in the problem's gold answer ("... The answer is 7."), so a distill run keeps
them, and each names its sample index and the server call, so duplicates and refills can be told
apart; every answer takes `latency_s`. `faults` are consumed one per POST, as in `tests.teachers.fault_server`: "ok", "500", "hang"
(answers only when the server stops). `quirk` applies to every answer:

- "fewer": one choice fewer than `n` asked (never less than one);
- "duplicate": every choice the same text;
- "short_logprobs": per-token logprobs for only the first half of the tokens.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from mwp.data.problem import Problem
from mwp.verify.numbers import format_number
from tests.servers.loopback import JSONHandler, LoopbackServer


class SolvingServer:
    def __init__(
        self,
        problems: Iterable[Problem],
        faults: Iterable[str] = (),
        quirk: str | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.answers = {p.question: format_number(p.answer) for p in problems}
        self.faults = list(faults)
        self.quirk = quirk
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._httpd: LoopbackServer | None = None

    def __enter__(self) -> SolvingServer:
        owner = self

        class Handler(_Handler):
            server_state = owner

        self._httpd = LoopbackServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def ok_calls(self) -> int:
        return sum(1 for c in self.calls if c["behaviour"] == "ok")

    def gold(self, prompt: str) -> str:
        found = [answer for question, answer in self.answers.items() if question in prompt]
        return found[0] if found else "0"

    def answer(self, body: dict[str, Any], call: int) -> dict[str, Any]:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])
        gold = self.gold(prompt)
        n = int(body.get("n") or 1)
        if self.quirk == "fewer":
            n = max(1, n - 1)
        choices = []
        for index in range(n):
            tag = 0 if self.quirk == "duplicate" else index
            text = f"Sample {tag} of call {call}: working it out step by step. The answer is {gold}."
            tokens = re.findall(r"\s*\S+", text)
            logprobs: dict[str, Any] | None = None
            if body.get("logprobs"):
                kept = tokens[: len(tokens) // 2] if self.quirk == "short_logprobs" else tokens
                logprobs = {"content": [{"token": t, "logprob": -0.1, "top_logprobs": []} for t in kept]}
            choices.append(
                {
                    "index": index,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                }
            )
        return {
            "id": f"chat-{call}",
            "object": "chat.completion",
            "model": body.get("model", "solver"),
            "choices": choices,
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 12 * n, "total_tokens": 0},
        }


class _Handler(JSONHandler):
    server_state: SolvingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_json(200, {"object": "list", "data": [{"id": "solver", "object": "model"}]})

    def do_POST(self) -> None:
        state = self.server_state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with state.lock:
            call = len(state.calls)
            behaviour = state.faults[call] if call < len(state.faults) else "ok"
            state.calls.append({"behaviour": behaviour, "body": body})
        if state.latency_s:
            time.sleep(state.latency_s)
        if behaviour == "hang":
            state.release.wait()
            self.close_connection = True
            return
        if behaviour != "ok":
            error = {"error": {"message": f"scripted {behaviour}", "type": "scripted", "code": behaviour}}
            self.send_json(int(behaviour), error)
            return
        self.send_json(200, state.answer(body, call))


def teacher_overrides(server: SolvingServer, cache_path: str, *more: str) -> list[str]:
    """A live teacher pointed at `server`, with its own completion cache file."""
    return [
        "teacher=vllm",
        "teacher.model=solver",
        f"teacher.base_url={server.base_url}",
        f"teacher.cache_path={cache_path}",
        "teacher.max_retries=0",
        "teacher.retry_base_s=0.01",
        *more,
    ]
