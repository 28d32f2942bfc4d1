"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for failures a real server will not make on demand.

Successful answers echo deterministic text that names the prompt, the sample and the server call,
so tests can tell every completion apart and detect duplicates. Faults are consumed in order,
one per POST: "ok", "429" (Retry-After seconds), "429ms" (retry-after-ms), "500", "503", "400",
"slow" (answers after `slow_s`), "malformed" (200 with broken JSON), "drop" (closes the
connection without answering), "partial" (headers, then half a body, then closes). GET /models
answers `models_status` (an error body that echoes the Authorization header, as some servers do).

Two quirks of real servers on demand: `max_n` caps the choices of every answer (llama.cpp's server
returns one whatever `n` asks; 0 answers none), and `serial` works one request at a time, finishing
each even when its client has gone (as llama.cpp's server does with a non-streamed request).

Run from the repository root to serve until killed: python -m tests.teachers.fault_server PORT_FILE [latency_s]
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from typing import Any

from tests.servers.loopback import JSONHandler, LoopbackServer


def echo_text(prompt: str, sample: int, call: int) -> str:
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"Echo {digest} sample {sample} call {call}. The answer is {len(prompt) % 97}."


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def _logprob(token: str) -> float:
    return -((len(token) % 7) / 10) - 0.01


class FaultServer:
    def __init__(
        self,
        faults: list[str] | tuple[str, ...] = (),
        latency_s: float = 0.0,
        slow_s: float = 2.0,
        retry_after: str = "1",
        retry_after_ms: str = "300",
        models_status: int = 200,
        max_n: int | None = None,
        serial: bool = False,
    ) -> None:
        self.faults = list(faults)
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.models_status = models_status
        self.max_n = max_n
        self.serial = serial
        self.model_lock = threading.Lock()  # held while "generating" when serial
        self.model_lists = 0  # GET /models calls
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []  # every POST: behaviour, path, body
        self.served_texts: list[str] = []  # texts of completions sent with a 200
        self.in_flight = 0
        self.max_in_flight = 0
        self.authorization: list[str | None] = []
        self._httpd: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = LoopbackServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.base_url

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ok_calls(self) -> int:
        return sum(1 for c in self.calls if c["behaviour"] == "ok")

    # -- answers ---------------------------------------------------------------------------------
    def next_behaviour(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        with self.lock:
            call = len(self.calls)
            behaviour = self.faults[call] if call < len(self.faults) else "ok"
            self.calls.append({"call": call, "behaviour": behaviour, "path": path, "body": body})
            return call, behaviour

    def answer(self, path: str, body: dict[str, Any], call: int) -> dict[str, Any]:
        chat = path.endswith("/chat/completions")
        if chat:
            messages = body.get("messages") or []
            prompt = "\n".join(str(m.get("content", "")) for m in messages)
        else:
            prompt = str(body.get("prompt", ""))
        n = int(body.get("n") or 1)
        if self.max_n is not None:
            n = min(n, self.max_n)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        k = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        want_logprobs = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        choices = []
        completion_tokens = 0
        for sample in range(n):
            text = echo_text(prompt, sample, call)
            finish = "stop"
            for stop in stops:
                at = text.find(stop) if stop else -1
                if at != -1:
                    text = text[:at]
            tokens = _tokens(text)
            completion_tokens += len(tokens)
            choice: dict[str, Any] = {"index": sample, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = (
                    {
                        "content": [
                            {
                                "token": t,
                                "logprob": _logprob(t),
                                "bytes": list(t.encode()),
                                "top_logprobs": [
                                    {
                                        "token": t if j == 0 else f"alt{j}",
                                        "logprob": _logprob(t) - j,
                                        "bytes": None,
                                    }
                                    for j in range(k)
                                ],
                            }
                            for t in tokens
                        ]
                    }
                    if want_logprobs
                    else None
                )
            else:
                choice["text"] = text
                choice["logprobs"] = (
                    {
                        "tokens": tokens,
                        "token_logprobs": [_logprob(t) for t in tokens],
                        "top_logprobs": [
                            {(t if j == 0 else f"alt{j}"): _logprob(t) - j for j in range(k)} for t in tokens
                        ],
                        "text_offset": [0] * len(tokens),
                    }
                    if want_logprobs
                    else None
                )
            choices.append(choice)
            with self.lock:
                self.served_texts.append(text)
        return {
            "id": f"cmpl-{call}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "echo"),
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt.split()) + completion_tokens,
            },
        }


class _Handler(JSONHandler):
    owner: FaultServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.owner
        with owner.lock:
            owner.model_lists += 1
        status = owner.models_status
        if status == 200:
            self.send_json(200, {"object": "list", "data": [{"id": "echo", "object": "model"}]})
        else:
            echoed = f"scripted {status} for {self.headers.get('Authorization')}"
            self.send_json(status, {"error": {"message": echoed, "type": "scripted", "code": status}})

    def do_POST(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with owner.lock:
            owner.authorization.append(self.headers.get("Authorization"))
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            if owner.serial:
                with owner.model_lock:  # one request at a time, in the order they get the lock
                    self._answer(body)
            else:
                self._answer(body)
        finally:
            with owner.lock:
                owner.in_flight -= 1

    def _answer(self, body: dict[str, Any]) -> None:
        owner = self.owner
        call, behaviour = owner.next_behaviour(self.path, body)
        if owner.latency_s:
            time.sleep(owner.latency_s)
        error = {"error": {"message": f"scripted {behaviour}", "type": "scripted", "code": behaviour}}
        if behaviour == "429":
            self.send_json(429, error, {"Retry-After": owner.retry_after})
        elif behaviour == "429ms":
            self.send_json(429, error, {"retry-after-ms": owner.retry_after_ms})
        elif behaviour in ("500", "503", "400", "401", "404"):
            self.send_json(int(behaviour), error)
        elif behaviour == "malformed":
            data = b'{"id": "x", "choices": [{"index": 0, "message": '
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif behaviour == "drop":
            self.close_connection = True
        elif behaviour == "partial":
            data = json.dumps(owner.answer(self.path, body, call)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            if behaviour == "slow":
                time.sleep(owner.slow_s)
            self.send_json(200, owner.answer(self.path, body, call))


def main() -> None:
    port_file = sys.argv[1]
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    server = FaultServer(latency_s=latency)
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.port))
    import os

    os.replace(port_file + ".tmp", port_file)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
