"""Build step of the sparse signal: each kept sample's teacher top-k, aligned to the student's target.

The distilled rows of a live teacher carry `logprobs` (a `TokenLogprobs` as a dict). For every row
the student trains on, its CoT target text (`formats.cot_target(problem, rationale)`, exactly what
the DataModule tokenizes) is aligned against the teacher's tokens with `TokenAligner`, and the
resulting `SparseSignal`s are written, one per distilled row in row order, to a store with a
coverage report beside it: in the pipeline `<cache.dir>/signals/<tokenizer-id>-<fingerprint>.safetensors`
(named by content), else the path given. A later run with the same rows, tokenizer and settings
reuses the file.

Rows without logprobs (a recorded teacher such as PaLM) get an empty signal (cross-entropy only)
unless a scorer is given: `TeacherForcedScorer` (`mwp.signals.scoring`) teacher-forces the rationale
through a local causal LM and reads its top-k logprobs at every rationale token, which then align
like sampled ones.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mwp.config.schema import MISSING_SIGNAL
from mwp.data.artifact import DistilledRow, TokenLogprobs
from mwp.data.formats import cot_target
from mwp.signals.alignment import (
    ALIGNMENTS,
    TOKEN_TYPES,
    TargetEncoder,
    make_aligner,
    normalize_token,
    token_type,
)
from mwp.signals.scoring import TeacherForcedScorer
from mwp.signals.store import SignalStore, SignalStoreError
from mwp.signals.types import SparseSignal

log = logging.getLogger(__name__)

SIGNALS_DIR = "signals"
MISSING_CHOICES = MISSING_SIGNAL


def tokenizer_id(tokenizer: PreTrainedTokenizerBase) -> str:
    """A file-name-safe id of a tokenizer: its folder name plus a hash of its vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:12]
    name = Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name or "tokenizer"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:48]
    return f"{safe}-{digest}"


def signals_path(run_dir: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    return Path(run_dir) / SIGNALS_DIR / f"{tokenizer_id(tokenizer)}.safetensors"


def target_text(row: DistilledRow) -> str:
    """The CoT target the student trains on for this distilled row."""
    return cot_target(row.problem, row.rationale)


def _fingerprint(rows: Sequence[DistilledRow], settings: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for row in rows:
        logprobs = asdict(row.logprobs) if row.logprobs is not None else None
        digest.update(json.dumps([row.id, row.rationale, logprobs], sort_keys=True).encode())
    return digest.hexdigest()[:24]


@dataclass
class SignalReport:
    """What the teacher signals cover. Coverage = aligned target tokens / all target tokens."""

    path: str
    rows: int
    rows_with_logprobs: int
    rows_scored: int
    rows_empty: int
    target_tokens: int
    covered_tokens: int
    alignment: str = "span"
    # (covered, target) tokens per `mwp.signals.alignment.TOKEN_TYPES` entry.
    by_type: dict[str, list[int]] = field(default_factory=dict)
    reused: bool = False

    @property
    def coverage(self) -> float:
        return self.covered_tokens / self.target_tokens if self.target_tokens else 0.0

    @property
    def rows_with_signal(self) -> int:
        return self.rows_with_logprobs + self.rows_scored

    def coverage_by_type(self) -> dict[str, float]:
        return {name: covered / total if total else 0.0 for name, (covered, total) in self.by_type.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "coverage": round(self.coverage, 4),
            "coverage_by_type": {name: round(v, 4) for name, v in self.coverage_by_type().items()},
            "rows_with_signal": self.rows_with_signal,
        }


def _teacher_logprobs(row: DistilledRow, where: str) -> TokenLogprobs | None:
    # DistilledRow.from_json has validated them already, naming the artifact's file and line.
    return row.logprobs


def prepare_signals(
    rows: Sequence[DistilledRow],
    tokenizer: PreTrainedTokenizerBase,
    out_path: Path,
    *,
    max_target_len: int,
    missing: str = "empty",
    scorer: TeacherForcedScorer | None = None,
    source: str = "distilled rows",
    alignment: str = "span",
    name_by_content: bool = False,
    encode_target: TargetEncoder | None = None,
    encoding: str = "seq2seq",
) -> tuple[SignalStore, SignalReport]:
    """Align every distilled row's teacher logprobs to its student target; write (or reuse) the store.

    Row r of the store is the signal of `rows[r]`. `missing` decides rows without logprobs: `empty`
    (no distribution, plain cross-entropy), `score` (through `scorer`, whose model loads only when
    the store has to be built), or `error`. `alignment` is `loss.signal.alignment` (`span`, `dtw` or
    `fu2023`, see `mwp.signals.alignment`). With `name_by_content`, `out_path` is a folder shared by runs (the
    stage cache's `signals/`): the store is named by the fingerprint of its rows and settings, built
    under a lock, so jobs of a sweep that need the same signals build them once.
    """
    if missing not in MISSING_CHOICES:
        raise ValueError(f"loss.signal.missing must be one of {MISSING_CHOICES}, got {missing!r}")
    if missing == "score" and scorer is None:
        raise ValueError("loss.signal.missing=score needs loss.signal.scorer (a local causal LM)")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"loss.signal.alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    out_path = Path(out_path)
    settings = {
        "max_target_len": max_target_len,
        "missing": missing,
        "tokenizer": tokenizer_id(tokenizer),
        "alignment": alignment,
        # Stores from before unshared slots were kept are rebuilt.
        "slots": "shared+unshared",
    }
    if encoding != "seq2seq":  # (T5 stores keep their fingerprint)
        settings["encoding"] = encoding
    if missing == "score" and scorer is not None:
        settings["scorer"] = scorer.identity
    fingerprint = _fingerprint(rows, settings)
    if not name_by_content:
        return _build_or_reuse(
            rows, tokenizer, out_path, fingerprint, settings, scorer, source, encode_target
        )
    out_path = out_path / f"{tokenizer_id(tokenizer)}-{fingerprint}.safetensors"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_or_reuse(
                rows, tokenizer, out_path, fingerprint, settings, scorer, source, encode_target
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_or_reuse(
    rows: Sequence[DistilledRow],
    tokenizer: PreTrainedTokenizerBase,
    out_path: Path,
    fingerprint: str,
    settings: Mapping[str, Any],
    scorer: TeacherForcedScorer | None,
    source: str,
    encode_target: TargetEncoder | None = None,
) -> tuple[SignalStore, SignalReport]:
    missing, alignment, max_target_len = (
        settings["missing"],
        settings["alignment"],
        settings["max_target_len"],
    )
    report_path = out_path.with_suffix(".coverage.json")
    if out_path.is_file() and report_path.is_file():
        try:
            store = SignalStore(out_path)
            if store.metadata.get("fingerprint") == fingerprint and len(store) == len(rows):
                report = SignalReport(**{**_report_fields(report_path), "reused": True})
                log.info("reusing teacher signals %s (coverage %.1f%%)", out_path, 100 * report.coverage)
                return store, report
            log.info("teacher signals at %s were made from other data or settings; rebuilding", out_path)
        except (SignalStoreError, ValueError, TypeError, KeyError) as err:
            log.warning("rebuilding unreadable teacher signals %s (%s)", out_path, err)

    aligner = make_aligner(alignment, tokenizer, max_length=max_target_len, encode_target=encode_target)
    texts = [target_text(row) for row in rows]
    teacher_rows = [_teacher_logprobs(row, f"{source} row {i + 1}") for i, row in enumerate(rows)]
    unscored = [i for i, lp in enumerate(teacher_rows) if lp is None]
    if unscored and missing == "error":
        raise ValueError(
            f"{source}: {len(unscored)} of {len(rows)} rows have no teacher logprobs (first: row "
            f"{unscored[0] + 1}, {rows[unscored[0]].id}); distil with a teacher that reports them "
            "(teacher.top_logprobs > 0) or set loss.signal.missing=score or empty"
        )
    scored = 0
    if unscored and missing == "score":
        assert scorer is not None
        log.info("scoring %d rows without logprobs through %s", len(unscored), scorer.identity)
        problems = [rows[i].problem for i in unscored]
        for i, logprobs in zip(
            unscored, scorer.score(problems, [rows[i].rationale for i in unscored]), strict=True
        ):
            teacher_rows[i] = logprobs
            scored += 1
    signals: list[SparseSignal] = []
    target_tokens = covered = with_logprobs = 0
    by_type = {name: [0, 0] for name in TOKEN_TYPES}
    for i, (text, logprobs) in enumerate(zip(texts, teacher_rows, strict=True)):
        if logprobs is None:
            ids, _ = aligner.encode_target(text, max_target_len)
            target_tokens += sum(1 for t in ids if t not in aligner.special_ids)
            for piece, token_id in zip(tokenizer.convert_ids_to_tokens(ids), ids, strict=True):
                if token_id not in aligner.special_ids:
                    by_type[token_type(normalize_token(piece))][1] += 1
            signals.append(SparseSignal.empty(0, target_ids=torch.zeros(0, dtype=torch.int32)))
            continue
        if i not in unscored:
            with_logprobs += 1
        aligned = aligner.align(logprobs, text)
        target_tokens += aligned.n_targets
        covered += len(aligned.pairs)
        for name, (type_covered, type_total) in aligned.by_type().items():
            by_type[name][0] += type_covered
            by_type[name][1] += type_total
        signals.append(aligned.signal)
    report = SignalReport(
        path=str(out_path),
        rows=len(rows),
        rows_with_logprobs=with_logprobs,
        rows_scored=scored,
        rows_empty=len(rows) - with_logprobs - scored,
        target_tokens=target_tokens,
        covered_tokens=covered,
        alignment=alignment,
        by_type=by_type,
    )
    metadata = {
        "fingerprint": fingerprint,
        "student_tokenizer": tokenizer_id(tokenizer),
        "coverage": f"{report.coverage:.4f}",
        "source": source,
    }
    SignalStore.write(out_path, signals, metadata=metadata)
    # The report is renamed into place too: a killed writer never leaves a store with half a report.
    scratch_report = report_path.with_name(f".{report_path.name}.{uuid.uuid4().hex[:8]}")
    scratch_report.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(scratch_report, report_path)
    log.info(
        "teacher signals: %d rows with logprobs, %d scored, %d empty; %s alignment covers %.1f%% of %d "
        "target tokens (%s) -> %s",
        report.rows_with_logprobs,
        report.rows_scored,
        report.rows_empty,
        alignment,
        100 * report.coverage,
        report.target_tokens,
        ", ".join(f"{name} {100 * v:.1f}%" for name, v in report.coverage_by_type().items()),
        out_path,
    )
    return SignalStore(out_path), report


def _report_fields(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    names = {
        "path",
        "rows",
        "rows_with_logprobs",
        "rows_scored",
        "rows_empty",
        "target_tokens",
        "covered_tokens",
    }
    fields = {k: data[k] for k in names}
    # Reports written before the span alignment have neither; the fingerprint then differs anyway.
    fields["alignment"] = data.get("alignment", "dtw")
    fields["by_type"] = data.get("by_type", {})
    return fields
