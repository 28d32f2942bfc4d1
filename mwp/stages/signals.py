"""Teacher signals for training: each kept sample's teacher top-k, aligned to the student's target.

The distilled rows of a live teacher carry `logprobs` (a `TokenLogprobs` as a dict). For every row
the student trains on, its CoT target text (`formats.cot_target(problem, rationale)`, exactly what
the DataModule tokenizes) is aligned against the teacher's tokens with `TokenAligner`, and the
resulting `SparseSignal`s are written, one per distilled row in row order, to
`<run>/signals/<tokenizer-id>.safetensors` with a coverage report beside it. A later run with the
same rows, tokenizer and settings reuses the file.

Rows without logprobs (a recorded teacher such as PaLM) get an empty signal (cross-entropy only)
unless a scorer is given: `TeacherForcedScorer` teacher-forces the rationale through a local causal
LM and reads its top-k logprobs at every rationale token, which then align like sampled ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mwp.data.artifact import DistilledRow
from mwp.data.formats import COT_TRIGGER, cot_target
from mwp.data.problem import Problem
from mwp.teachers.alignment import TokenAligner
from mwp.teachers.base import TeacherRequest, TokenLogprobs
from mwp.teachers.signals import SignalStore, SignalStoreError, SparseSignal

log = logging.getLogger(__name__)

SIGNALS_DIR = "signals"
MISSING_CHOICES = ("empty", "score", "error")
# Teacher text is untrusted: a rationale longer than this is cut before scoring.
MAX_SCORED_TOKENS = 1024


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
    reused: bool = False

    @property
    def coverage(self) -> float:
        return self.covered_tokens / self.target_tokens if self.target_tokens else 0.0

    @property
    def rows_with_signal(self) -> int:
        return self.rows_with_logprobs + self.rows_scored

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "coverage": round(self.coverage, 4),
            "rows_with_signal": self.rows_with_signal,
        }


class TeacherForcedScorer:
    """Top-k logprobs of given rationales under a local causal LM (an `HFTeacher`), by teacher forcing.

    Each rationale is scored as the answer to the zero-shot CoT prompt of its problem, rendered the
    way the teacher renders requests (its chat template when it has one).
    """

    def __init__(self, teacher: Any, *, top_logprobs: int = 5, batch_size: int = 4) -> None:
        if not 1 <= top_logprobs <= 20:
            raise ValueError(f"loss.signal.scorer.top_logprobs must be in [1, 20], got {top_logprobs}")
        if batch_size < 1:
            raise ValueError(f"loss.signal.scorer.batch_size must be >= 1, got {batch_size}")
        self.teacher = teacher
        self.top_logprobs = top_logprobs
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, conf: Mapping[str, Any]) -> TeacherForcedScorer:
        from mwp.teachers.hf import HFTeacher

        conf = dict(conf)
        top = int(conf.pop("top_logprobs", 5))
        batch_size = int(conf.get("batch_size") or 4)
        allowed = {"model", "gguf", "gguf_package", "gguf_file", "name", "device", "dtype", "batch_size"}
        allowed |= {"chat_template", "convert_dir", "threads"}
        unknown = set(conf) - allowed
        if unknown:
            raise ValueError(
                f"loss.signal.scorer: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        kwargs = {k: v for k, v in conf.items() if v is not None}
        teacher = HFTeacher(**kwargs)
        return cls(teacher, top_logprobs=top, batch_size=batch_size)

    @property
    def identity(self) -> str:
        return f"{getattr(self.teacher, 'identity', type(self.teacher).__name__)}:top{self.top_logprobs}"

    def _prompt(self, problem: Problem) -> str:
        request = TeacherRequest(problem.id, f"Q: {problem.question.strip()}\nA: {COT_TRIGGER}")
        return self.teacher.render(request)

    @torch.no_grad()
    @torch.no_grad()
    def score(self, problems: Sequence[Problem], rationales: Sequence[str]) -> list[TokenLogprobs]:
        """One `TokenLogprobs` per rationale: each token, its logprob and the model's top-k there."""
        teacher = self.teacher
        model, device = teacher.model, teacher.device
        templated = teacher.use_chat_template
        encoded: list[tuple[list[int], list[int]]] = []
        limit = teacher.context_length
        for problem, rationale in zip(problems, rationales, strict=True):
            prompt = teacher.encode(self._prompt(problem), templated)
            answer = list(teacher.tokenizer(rationale, add_special_tokens=False)["input_ids"])[
                :MAX_SCORED_TOKENS
            ]
            if limit is not None and len(prompt) + len(answer) > limit:
                answer = answer[: max(0, limit - len(prompt))]
            encoded.append((prompt, answer))
        results: list[TokenLogprobs] = []
        starts = range(0, len(encoded), self.batch_size)
        for start in tqdm(
            starts, desc="score rationales", unit="batch", mininterval=1.0, disable=len(starts) < 2
        ):
            chunk = encoded[start : start + self.batch_size]
            width = max(len(p) + len(a) for p, a in chunk)
            ids = torch.full((len(chunk), width), teacher.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (prompt, answer) in enumerate(chunk):
                sequence = prompt + answer
                ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
                mask[row, : len(sequence)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, (prompt, answer) in enumerate(chunk):
                if not answer:
                    results.append(TokenLogprobs(tokens=[], logprobs=[]))
                    continue
                # The logits at position i predict token i + 1.
                span = logits[row, len(prompt) - 1 : len(prompt) + len(answer) - 1].float()
                logprobs = torch.log_softmax(span, dim=-1)
                answer_ids = torch.tensor(answer, device=logprobs.device)
                picked = logprobs.gather(-1, answer_ids[:, None])[:, 0].tolist()
                top_values, top_indices = logprobs.topk(self.top_logprobs, dim=-1)
                results.append(
                    TokenLogprobs(
                        tokens=[teacher.token_text(t) for t in answer],
                        logprobs=picked,
                        top_tokens=[[teacher.token_text(t) for t in alts] for alts in top_indices.tolist()],
                        top_logprobs=top_values.tolist(),
                    )
                )
        return results

    def close(self) -> None:
        self.teacher.close()


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
) -> tuple[SignalStore, SignalReport]:
    """Align every distilled row's teacher logprobs to its student target; write (or reuse) the store.

    Row r of the store is the signal of `rows[r]`. `missing` decides rows without logprobs: `empty`
    (no distribution, plain cross-entropy), `score` (through `scorer`, whose model loads only when
    the store has to be built), or `error`.
    """
    if missing not in MISSING_CHOICES:
        raise ValueError(f"loss.signal.missing must be one of {MISSING_CHOICES}, got {missing!r}")
    if missing == "score" and scorer is None:
        raise ValueError("loss.signal.missing=score needs loss.signal.scorer (a local causal LM)")
    out_path = Path(out_path)
    report_path = out_path.with_suffix(".coverage.json")
    settings = {"max_target_len": max_target_len, "missing": missing, "tokenizer": tokenizer_id(tokenizer)}
    if missing == "score" and scorer is not None:
        settings["scorer"] = scorer.identity
    fingerprint = _fingerprint(rows, settings)
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

    aligner = TokenAligner(tokenizer, max_length=max_target_len)
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
    for i, (text, logprobs) in enumerate(zip(texts, teacher_rows, strict=True)):
        if logprobs is None:
            ids = tokenizer(text, truncation=True, max_length=max_target_len)["input_ids"]
            target_tokens += sum(1 for t in ids if t not in aligner.special_ids)
            signals.append(SparseSignal.empty(0, target_ids=torch.zeros(0, dtype=torch.int32)))
            continue
        if i not in unscored:
            with_logprobs += 1
        alignment = aligner.align(logprobs, text)
        target_tokens += alignment.n_targets
        covered += len(alignment.pairs)
        signals.append(alignment.signal)
    report = SignalReport(
        path=str(out_path),
        rows=len(rows),
        rows_with_logprobs=with_logprobs,
        rows_scored=scored,
        rows_empty=len(rows) - with_logprobs - scored,
        target_tokens=target_tokens,
        covered_tokens=covered,
    )
    metadata = {
        "fingerprint": fingerprint,
        "student_tokenizer": tokenizer_id(tokenizer),
        "coverage": f"{report.coverage:.4f}",
        "source": source,
    }
    SignalStore.write(out_path, signals, metadata=metadata)
    report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    log.info(
        "teacher signals: %d rows with logprobs, %d scored, %d empty; coverage %.1f%% of %d target tokens -> %s",
        report.rows_with_logprobs,
        report.rows_scored,
        report.rows_empty,
        100 * report.coverage,
        report.target_tokens,
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
    return {k: data[k] for k in names}
