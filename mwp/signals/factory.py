"""The signal source a run's `loss` section asks for, built once before training: the trainer never
branches on the kind of teacher signal.

- no distillation term: none (cross-entropy only);
- `loss.signal.source=sparse`: the distilled rows' stored top-k, aligned to the student (built once per
  content into the stage cache's `signals/`), scored by a local causal LM where rows have none and
  `loss.signal.missing=score`;
- `loss.signal.source=dense`: a teacher with the student's vocabulary (a T5 for a T5, a causal LM with the
  student's tokenizer for a causal student), run on every batch;
- `loss.on_policy.fraction > 0`: the student samples on that share of steps and the dense teacher or
  the causal LM of `loss.signal.scorer` scores the samples; the other steps use the stored signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mwp.config.schema import LossConfig, ScorerConfig
from mwp.data.artifact import DistilledRow
from mwp.signals.alignment import TargetEncoder
from mwp.signals.build import SignalReport, prepare_signals, signals_path
from mwp.signals.on_policy import CausalOnPolicySource, OnPolicySource
from mwp.signals.scoring import TeacherForcedScorer
from mwp.signals.sources import DenseTeacherSource, SignalSource, StoredSparseSource
from mwp.signals.types import SparseSignal


@dataclass
class TeacherSignals:
    """What training gets from the teacher: the source the module asks per batch, the stored signals
    the collator puts into batches (row r of `rows`), and the coverage report of those."""

    source: SignalSource | None = None
    stored: Any = None  # a SignalStore (or a list of SparseSignal): row r is the signal of distilled row r
    report: SignalReport | None = None


def build_scorer(scorer: ScorerConfig) -> TeacherForcedScorer:
    return TeacherForcedScorer.from_config(scorer.model_dump())


def stored_signals(
    loss: LossConfig,
    rows: list[DistilledRow],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_target_len: int,
    data_path: Path,
    run_dir: Path,
    signals_dir: Path | None = None,
    encode_target: TargetEncoder | None = None,
    encoding: str = "seq2seq",
) -> tuple[list[SparseSignal] | Any, SignalReport]:
    """Sparse teacher signals for the distilled rows: built once per content in `signals_dir` (the stage
    cache's, shared by the runs of a sweep), else once per run folder."""
    signal = loss.signal
    scorer = build_scorer(signal.scorer) if signal.missing == "score" else None
    try:
        store, report = prepare_signals(
            rows,
            tokenizer,
            signals_dir if signals_dir is not None else signals_path(run_dir, tokenizer),
            max_target_len=max_target_len,
            missing=signal.missing,
            scorer=scorer,
            source=str(data_path),
            alignment=signal.alignment,
            name_by_content=signals_dir is not None,
            encode_target=encode_target,
            encoding=encoding,
        )
    finally:
        if scorer is not None:
            scorer.close()
    if report.rows_with_signal == 0:
        raise ValueError(
            f"loss.terms need teacher distributions, but none of the {report.rows} distilled rows in {data_path} has teacher "
            "logprobs. Distil with a teacher that reports them "
            "(e.g. teacher=smollm2, or an API teacher with teacher.top_logprobs > 0), set "
            "loss.signal.missing=score to teacher-force the rows through loss.signal.scorer (SmolLM2 by "
            "default), or use loss.signal.source=dense with loss.signal.teacher_model=<T5 folder>"
        )
    return store, report


def build_teacher_signals(
    loss: LossConfig,
    rows: list[DistilledRow],
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int,
    max_target_len: int,
    data_path: Path,
    run_dir: Path,
    signals_dir: Path | None = None,
    encode_target: TargetEncoder | None = None,
    encoding: str = "seq2seq",
) -> TeacherSignals:
    """The teacher signal `loss` asks for (see the module docstring). `encode_target` and `encoding`:
    how the student tokenizes a target, and its name (see `mwp.signals.build.prepare_signals`)."""
    if not any(term.needs_teacher for term in loss.terms):
        return TeacherSignals()
    signal, on_policy = loss.signal, loss.on_policy

    def stored() -> tuple[Any, SignalReport]:
        return stored_signals(
            loss,
            rows,
            tokenizer,
            max_target_len=max_target_len,
            data_path=data_path,
            run_dir=run_dir,
            signals_dir=signals_dir,
            encode_target=encode_target,
            encoding=encoding,
        )

    sampling = {
        "fraction": float(on_policy.fraction),
        "temperature": float(on_policy.temperature),
        "max_new_tokens": int(on_policy.max_new_tokens),
        "seed": int(seed),
    }
    if on_policy.fraction > 0 and signal.source == "sparse":
        # A causal LM teacher with its own vocabulary scores the samples (span-aligned); the other
        # steps train on the rows' stored signals.
        store, report = stored() if on_policy.fraction < 1 else (None, None)
        source = CausalOnPolicySource(
            build_scorer(signal.scorer),
            tokenizer,
            alignment=signal.alignment,
            encode_target=encode_target,
            **sampling,
        )
        return TeacherSignals(source, store, report)
    if on_policy.fraction > 0:
        return TeacherSignals(OnPolicySource.from_pretrained(str(signal.teacher_model), **sampling))
    if signal.source == "dense":
        return TeacherSignals(
            DenseTeacherSource.from_pretrained(str(signal.teacher_model), top_k=signal.dense_top_k)
        )
    store, report = stored()
    return TeacherSignals(StoredSparseSource(), store, report)
