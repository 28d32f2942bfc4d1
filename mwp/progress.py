"""Progress of long loops that a person can follow: a bar on a terminal, log lines otherwise.

A tqdm bar redrawn in a file (a SLURM log, `make demo > log`) is unreadable, and Python buffers it;
when stderr is not a terminal the same loop logs one line every `MWP_PROGRESS_EVERY_S` seconds (30
by default) and one when it ends. `MWP_PROGRESS=bar|log|off` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("mwp.progress")

MODES = ("bar", "log", "off")


def progress_mode() -> str:
    chosen = os.environ.get("MWP_PROGRESS", "").strip().lower()
    if chosen in MODES:
        return chosen
    return "bar" if sys.stderr.isatty() else "log"


class Progress:
    """`update(n)` as a loop advances; `postfix(...)` adds figures (rates, cost) to the bar or line."""

    def __init__(self, total: int | None, desc: str, unit: str = "item", *, disable: bool = False) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self.mode = "off" if disable else progress_mode()
        self._started = self._last = time.monotonic()
        self._every = float(os.environ.get("MWP_PROGRESS_EVERY_S") or 30.0)
        self._postfix: dict[str, Any] = {}
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)

    def postfix(self, **figures: Any) -> None:
        self._postfix = figures
        if self._bar is not None:
            self._bar.set_postfix(figures, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            log.info("%s", self.line())

    def line(self, final: bool = False) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.done}{of} {self.unit}s{share}, {rate:.1f}/s, {elapsed:.0f} s"
        if not final and self.total and rate > 0:
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        if self._postfix:
            text += " | " + ", ".join(f"{k} {v}" for k, v in self._postfix.items())
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and self.done:
            log.info("%s", self.line(final=True))
        self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SamplingProgress:
    """Progress over samples showing samples/s, kept/s and the money spent so far (`mwp.progress`)."""

    def __init__(self, total: int | None, desc: str = "sampling", disable: bool | None = None) -> None:
        self._progress = Progress(total, desc, unit="sample", disable=bool(disable))
        self._start = time.monotonic()
        self.samples = 0
        self.kept = 0
        self.short = 0
        self.cost_usd = 0.0

    def update(self, samples: int, kept: int = 0, cost: float | None = None, short: int = 0) -> None:
        """`samples` received for one request, `short` of them missing (asked for, not given)."""
        self.samples += samples
        self.kept += kept
        self.short += short
        if cost is not None:
            self.cost_usd = cost
        elapsed = max(time.monotonic() - self._start, 1e-9)
        figures = {"kept/s": f"{self.kept / elapsed:.1f}", "kept": self.kept, "cost": f"${self.cost_usd:.4f}"}
        if self.short:
            figures["received"] = f"{self.samples}/{self.samples + self.short} requested"
        self._progress.postfix(**figures)
        self._progress.update(samples)

    def close(self) -> None:
        self._progress.close()

    def __enter__(self) -> SamplingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
