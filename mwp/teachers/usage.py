"""What a teacher spent: calls, retries, tokens, samples and money, written next to each artifact as usage.json."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mwp.data.io import write_json


@dataclass
class UsageLedger:
    """Tokens, calls and money spent by one teacher; thread-safe; written next to the artifact as usage.json."""

    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    samples: int = 0
    cached_samples: int = 0
    # responses with fewer choices than asked for, and the calls made to top them up
    short_calls: int = 0
    topup_calls: int = 0
    # calls abandoned after timeout_s (retried: the server may have generated them anyway)
    timeouts: int = 0
    # how many calls were in flight (OpenAI-compatible servers: CallLimit.to_json)
    concurrency: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_call(self, prompt_tokens: int, completion_tokens: int, samples: int) -> None:
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.samples += samples

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_short(self) -> None:
        with self._lock:
            self.short_calls += 1

    def record_topup(self, calls: int) -> None:
        with self._lock:
            self.topup_calls += calls

    def record_timeout(self) -> None:
        with self._lock:
            self.timeouts += 1

    def record_failure(self) -> None:
        with self._lock:
            self.failed_calls += 1

    def record_cached(self, samples: int) -> None:
        with self._lock:
            self.cached_samples += samples

    @property
    def cost_usd(self) -> float:
        return (
            self.prompt_tokens * self.price_input_per_1m + self.completion_tokens * self.price_output_per_1m
        ) / 1e6

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "failed_calls": self.failed_calls,
                "retries": self.retries,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "samples": self.samples,
                "cached_samples": self.cached_samples,
                "short_calls": self.short_calls,
                "topup_calls": self.topup_calls,
                "timeouts": self.timeouts,
                **({"concurrency": dict(self.concurrency)} if self.concurrency is not None else {}),
                "price_input_per_1m": self.price_input_per_1m,
                "price_output_per_1m": self.price_output_per_1m,
                "cost_usd": round(self.cost_usd, 6),
            }

    def write(self, path: str | os.PathLike[str]) -> Path:
        write_json(path, self.to_json())
        return Path(path)


def teacher_usage(teacher: object) -> UsageLedger:
    """The teacher's ledger, or an empty one for teachers that spend nothing (recorded, batch files)."""
    usage = getattr(teacher, "usage", None)
    return usage if isinstance(usage, UsageLedger) else UsageLedger()
