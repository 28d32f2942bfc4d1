"""Lightning DataModule serving distilled data in Fu et al.'s four formats and the equation format.

The equation format trains on the rows' verified templates (`DistilledRow.template`): one example
per problem and distinct template, source the masked question; rows without a usable template are
skipped for this format and counted in `stats["equation"]` (train_stats.json), together with the
most frequent training template, the trivial baseline the evaluate stage scores beside the student.

Validation problems are held out by normalised question (`mwp.data.dedup`: all samples of every
problem with that question leave the training set, whatever its id), so the checkpoint chosen on
validation accuracy was never selected on data the student trained on.

`max_source_len` and `max_new_tokens` default to "auto": derived in `setup` from the sources
(in-context exemplars included) and the tokenized targets, so exemplars are never silently dropped
and generation never stops before the answer sentence. An explicit number that is too short for
them is a `ConfigError` naming the key and the length needed; `stats` records what was derived
and how many exemplars each in-context example kept.

Training batches come in accumulation windows of `trainer.accumulate_grad_batches` micro-batches,
one window per optimizer step (`WindowedTrainLoader`), and every micro-batch carries its window's
token counts (`window_n_tokens`): the module all-reduces them over devices and divides each loss
term by the tokens of the whole global step, so accumulating micro-batches on any number of
devices gives exactly the gradient of one big batch however unevenly target lengths fall. With teacher signals (a
`SignalStore`, one row per distilled row) CoT examples also carry `teacher_ids`,
`teacher_logprobs` `[B, L, k]` and `teacher_mask` `[B, L]`; answer-only targets have none.

`packing` (causal students only) lays each micro-batch's examples into fewer, fuller rows of at most
`packed_length` tokens (`CausalCodec.packed_train_batch`): `batch_size` still counts examples, the labels,
teacher signals and token counts stay one row per example, and only the padding goes. "auto" is
`max_source_len + max_target_len`, the widest row an unpacked batch can have; a number shorter than the
longest training example is a `ConfigError`.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerBase

from mwp.config import ConfigError
from mwp.data.artifact import DistilledRow
from mwp.data.dedup import normalize_question
from mwp.data.formats import (
    ANSWER_ONLY,
    EQUATION,
    EQUATION_NOTATIONS,
    EVAL_FORMATS,
    EXEMPLAR_SOURCES,
    FORMATS,
    Example,
    build_equation_example,
    build_example,
    build_source,
    gold_exemplar_pool,
    problem_numbers,
    sample_exemplars,
    template_expression,
)
from mwp.data.problem import Problem
from mwp.signals import SparseSignal, collate_sparse
from mwp.signals.positions import COT_ROWS_KEY, SOURCES_KEY, window_counts
from mwp.student.codec import CausalCodec, Codec, Seq2SeqCodec, as_codec
from mwp.verify.numbers import format_number
from mwp.verify.templates import TemplateError


@dataclass
class EvalItem:
    problem: Problem
    source: str
    format: str = "zero_shot_cot"


def split_problem_ids(
    ids: Sequence[str], val_fraction: float, seed: int, val_size: int | None = None
) -> tuple[list[str], list[str]]:
    """Deterministic split by problem id: (train ids, validation ids).

    `val_size`, a count, overrides `val_fraction`; either way the held-out ids are a prefix of one
    seeded shuffle, so a larger hold-out contains every smaller one.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(set(ids))
    random.Random(seed).shuffle(ordered)
    if val_size is not None:
        if val_size < 0:
            raise _config_error(f"data.val_size={val_size}: a count >= 0, or null to use data.val_fraction")
        if val_size >= len(ordered):
            raise _config_error(
                f"data.val_size={val_size} would hold out all {len(ordered)} distilled problems (distinct "
                "questions) and leave none to train on; lower it, or set data.val_size=null to hold out "
                "data.val_fraction of them"
            )
        return ordered[val_size:], ordered[:val_size]
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(ordered) > 1:
        n_val = 1
    return ordered[n_val:], ordered[:n_val]


def micro_batch_size(formats: Sequence[str], batch_size: int, by_format: Mapping[str, int] | None) -> int:
    """The training micro-batch size: `by_format`'s smallest entry over the trained formats (the longest
    sources set the memory a micro-batch needs), else `batch_size`."""
    if not by_format:
        return batch_size
    missing = [f for f in formats if f not in by_format]
    if missing:
        raise _config_error(
            f"data.batch_size_by_format={dict(by_format)} has no size for {missing} of data.formats={list(formats)}; "
            "add them, or set data.batch_size_by_format=null to use data.batch_size"
        )
    sizes = [by_format[f] for f in formats]
    if any(not isinstance(n, int) or n < 1 for n in sizes):
        raise _config_error(
            f"data.batch_size_by_format={dict(by_format)}: every size must be an integer >= 1"
        )
    return min(sizes)


def split_problems_by_question(
    problems: Sequence[Problem], val_fraction: float, seed: int, val_size: int | None = None
) -> tuple[list[str], list[str]]:
    """(train ids, validation ids), split by normalised question: ids with one question stay together.

    MultiArith, for one, holds the same question under two ids; a split by id would put one copy
    in validation and train on the other.
    """
    ids_by_key: dict[str, set[str]] = defaultdict(set)
    for problem in problems:
        ids_by_key[normalize_question(problem.question)].add(problem.id)
    train_keys, val_keys = split_problem_ids(list(ids_by_key), val_fraction, seed, val_size)
    train = sorted(i for key in train_keys for i in ids_by_key[key])
    val = sorted(i for key in val_keys for i in ids_by_key[key])
    if set(train) & set(val):
        raise ValueError(f"problem ids with different questions: {sorted(set(train) & set(val))[:5]}")
    return train, val


AUTO = "auto"
# An explicit data.max_source_len must keep every exemplar in this share of in-context examples,
# and data.max_new_tokens must cover this quantile of training target lengths.
COVERAGE = 0.95


def quantile(values: Sequence[int], q: float) -> int:
    """The smallest value with at least a share `q` of `values` at or below it (0 for none)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _config_error(message: str) -> Exception:
    return ConfigError(message)


@dataclass(frozen=True)
class TrainItem:
    """A training example and the distilled row whose teacher signal applies to its target (or None)."""

    example: Example
    signal_row: int | None = None


def build_train_items(
    rows: Sequence[DistilledRow],
    formats: Sequence[str],
    num_exemplars: int,
    seed: int,
    *,
    row_indices: Sequence[int] | None = None,
    max_source_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    require_split: str | None = None,
    equation_notation: str = "infix",
    skipped: Counter[str] | None = None,
    exemplar_source: str = "rationales",
) -> list[TrainItem]:
    """One item per kept sample and CoT format, one per problem and answer-only format. CoT items
    carry their row's index (`row_indices[i]` for `rows[i]`, default i): the teacher signal covers
    the target only, whatever the source format.

    In-context exemplars come from `rows` (the training side of the hold-out), never a problem with
    the example's own normalised question; `require_split` is the dataset's training split (e.g.
    Weak12K's "valid"), which every exemplar must come from (None: not checked). Each example draws
    its own. `exemplar_source` says what a CoT exemplar shows: "rationales", a kept teacher rationale
    (drawn over rows, so a problem with more kept samples is drawn more often), or "gold", the
    problem's own worked solution (drawn uniformly over distinct problems; Fu et al.'s exemplars).

    The equation format makes one item per problem and distinct target from the rows' templates
    (in `equation_notation`), with no teacher signal (that covers rationales); rows without a
    template, or with one it cannot train on, are counted in `skipped` by reason."""
    if row_indices is not None and len(row_indices) != len(rows):
        raise ValueError(f"row_indices has {len(row_indices)} entries for {len(rows)} rows")
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"data.formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}")
    if exemplar_source not in EXEMPLAR_SOURCES:
        raise _config_error(f"data.exemplars={exemplar_source!r}: one of {list(EXEMPLAR_SOURCES)}")
    rng = random.Random(seed)
    samples = [(r.problem, r.rationale) for r in rows]
    pool = samples
    if exemplar_source == "gold" and num_exemplars and any(f.startswith("in_context") for f in formats):
        pool = gold_exemplar_pool([r.problem for r in rows])
        if len(pool) <= num_exemplars:
            raise _config_error(
                f"data.exemplars=gold: {len(pool)} training problems have a worked solution or equation, "
                f"too few for data.num_exemplars={num_exemplars} exemplars besides the problem itself; use "
                "data.exemplars=rationales (the teacher's rationales) for a dataset without gold solutions"
            )
    items: list[TrainItem] = []
    answered: set[tuple[str, str]] = set()
    for position, (problem, rationale) in enumerate(samples):
        row_index = row_indices[position] if row_indices is not None else position
        for fmt in formats:
            if fmt == EQUATION:
                item = _equation_item(rows[position], equation_notation, answered, skipped)
                if item is not None:
                    items.append(item)
                continue
            if fmt in ANSWER_ONLY:
                if (problem.id, fmt) in answered:
                    continue
                answered.add((problem.id, fmt))
            exemplars = (
                sample_exemplars(
                    pool,
                    num_exemplars,
                    rng,
                    exclude_id=problem.id,
                    exclude_question=problem.question,
                    require_split=require_split,
                )
                if fmt.startswith("in_context")
                else ()
            )
            example = build_example(
                problem,
                rationale,
                fmt,
                exemplars,
                max_source_tokens=max_source_tokens if exemplars else None,
                count_tokens=count_tokens,
            )
            items.append(TrainItem(example, None if fmt in ANSWER_ONLY else row_index))
    return items


def vocabulary_texts(
    rows: Sequence[DistilledRow], formats: Sequence[str], equation_notation: str = "infix"
) -> list[str]:
    """The sources and targets a trained student tokenizer is built from (`student.tokenizer`).

    In-context formats add no words of their own (their exemplars are training problems), so their
    zero-shot counterparts stand in for them.
    """
    zero_shot = sorted({f.replace("in_context", "zero_shot") for f in formats})
    items = build_train_items(rows, zero_shot, 0, 0, equation_notation=equation_notation)
    return [text for item in items for text in (item.example.source, item.example.target)]


def _equation_item(
    row: DistilledRow, notation: str, seen: set[tuple[str, str]], skipped: Counter[str] | None
) -> TrainItem | None:
    reason = None
    if row.template is None:
        reason = "no_template"
    else:
        try:
            example = build_equation_example(row.problem, row.template, notation)
        except TemplateError:
            reason = "unusable_template"
    if reason is not None:
        if skipped is not None:
            skipped[reason] += 1
        return None
    key = (row.id, f"{EQUATION}:{example.target}")
    if key in seen:
        if skipped is not None:
            skipped["repeated_template"] += 1
        return None
    seen.add(key)
    return TrainItem(example, None)


def _usable_expression(template: str | None) -> str | None:
    if template is None:
        return None
    try:
        return template_expression(template)
    except TemplateError:
        return None


class PairCollator:
    """Training tensors of (source, target) examples for the student's kind (`Codec.train_batch`), plus
    which rows have chain-of-thought targets and the source texts (on-policy teachers read them).
    `packed_length` (causal students): pack the examples into rows of at most that many tokens."""

    def __init__(
        self,
        codec: Codec | PreTrainedTokenizerBase,
        max_source_len: int,
        max_target_len: int,
        packed_length: int | None = None,
    ) -> None:
        self.codec = as_codec(codec)
        if packed_length is not None and not isinstance(self.codec, CausalCodec):
            raise _config_error(
                f"data.packing=true packs causal students' batches; this student is {self.codec.kind}: "
                "set data.packing=false"
            )
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        self.packed_length = packed_length

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        sources, targets = [e.source for e in examples], [e.target for e in examples]
        batch: dict[str, Any]
        if self.packed_length is not None:
            assert isinstance(self.codec, CausalCodec)
            batch = self.codec.packed_train_batch(
                sources, targets, self.max_source_len, self.max_target_len, self.packed_length
            )
        else:
            batch = self.codec.train_batch(sources, targets, self.max_source_len, self.max_target_len)
        batch[COT_ROWS_KEY] = torch.tensor([e.format not in ANSWER_ONLY for e in examples], dtype=torch.bool)
        batch[SOURCES_KEY] = sources
        return batch


Signals = Sequence[SparseSignal]  # a SignalStore or a list: row r is the signal of distilled row r


def _signal_of(signals: Signals | None, item: TrainItem) -> SparseSignal | None:
    if signals is None or item.signal_row is None:
        return None
    return signals[item.signal_row]


def window_token_counts(micro_batches: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Tokens the loss terms average over in one accumulation window (this rank's share): labelled
    target tokens, and those with a teacher distribution (what a sparse distillation term counts),
    each also per chain-of-thought / answer-only rows, by the one definition the losses use
    (`mwp.signals.positions.window_counts`)."""
    return window_counts(list(micro_batches))


class TrainCollator:
    """Training tensors and, with signals, the sparse teacher `[B, L, k]` of one micro-batch."""

    def __init__(
        self,
        codec: Codec | PreTrainedTokenizerBase,
        max_source_len: int,
        max_target_len: int,
        *,
        signals: Signals | None = None,
        k: int | None = None,
        packed_length: int | None = None,
    ) -> None:
        self.pairs = PairCollator(codec, max_source_len, max_target_len, packed_length)
        self.signals = signals
        self.k = k

    def __call__(self, items: Sequence[TrainItem]) -> dict[str, Any]:
        out: dict[str, Any] = self.pairs([item.example for item in items])
        if self.signals is not None:
            signals = [_signal_of(self.signals, item) for item in items]
            out.update(collate_sparse(signals, out["labels"].shape[1], labels=out["labels"], k=self.k))
        return out


class _WindowCollator:
    """One accumulation window of items -> its micro-batches, each carrying the window's token counts."""

    def __init__(self, collate: TrainCollator, batch_size: int, accumulate: int) -> None:
        self.collate = collate
        self.batch_size = batch_size
        self.accumulate = accumulate

    def __call__(self, items: Sequence[TrainItem]) -> list[dict[str, Any]]:
        micro = [self.collate(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        counts = window_token_counts(micro)
        for batch in micro:
            batch["window_n_tokens"] = counts
            batch["accumulate"] = self.accumulate
        return micro


class WindowedTrainLoader:
    """Training micro-batches, grouped in accumulation windows, resumable mid-epoch.

    Each window is `accumulate` micro-batches of `batch_size` items (one optimizer step, as
    Lightning groups batches from the start of every epoch; the last window may be shorter). Every
    micro-batch carries `window_n_tokens`, this rank's token counts of its whole window; the module
    all-reduces them across ranks, so every loss term is an exact token mean over the global step on
    any number of devices. Items are sharded and shuffled by a standard `DistributedSampler` (one
    replica on a single device), seeded by `seed` and the epoch Lightning sets, so the order is a
    function of (seed, epoch) alone. `state_dict` records how far into the epoch training got (the
    trainer's own count of processed batches), and a restored loader skips exactly those.
    """

    def __init__(
        self,
        items: Sequence[TrainItem],
        collate: TrainCollator,
        *,
        batch_size: int,
        accumulate: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_workers: int = 0,
        progress: Callable[[], int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if accumulate < 1:
            raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}")
        self.items = list(items)
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.sampler = DistributedSampler(
            self.items, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.windows = DataLoader(
            self.items,
            batch_size=batch_size * accumulate,
            sampler=self.sampler,
            collate_fn=_WindowCollator(collate, batch_size, accumulate),
            num_workers=num_workers,
        )
        self.progress = progress
        self._yielded = 0
        self._skip = 0
        self._skip_epoch = -1

    def __len__(self) -> int:
        per_rank = len(self.sampler)
        window = self.batch_size * self.accumulate
        full, rest = divmod(per_rank, window)
        return full * self.accumulate + math.ceil(rest / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skip, self._skip = (self._skip if self.sampler.epoch == self._skip_epoch else 0), 0
        whole, partial = divmod(skip, self.accumulate)
        self._yielded = whole * self.accumulate
        windows = self._windows_after(whole) if whole else iter(self.windows)
        for position, micro in enumerate(windows):
            for index, batch in enumerate(micro):
                self._yielded += 1  # the position in the epoch, skipped batches included
                if position == 0 and index < partial:
                    continue  # already trained on before the checkpoint this run resumed from
                yield batch

    def _windows_after(self, start: int) -> Iterator[list[dict[str, Any]]]:
        """The epoch's windows from number `start` on; the skipped ones are never collated."""
        indices = list(self.sampler)
        size = self.batch_size * self.accumulate
        collate = self.windows.collate_fn
        for begin in range(start * size, len(indices), size):
            yield collate([self.items[i] for i in indices[begin : begin + size]])

    def state_dict(self) -> dict[str, int]:
        consumed = self.progress() if self.progress is not None else self._yielded
        return {"epoch": int(self.sampler.epoch), "consumed": int(consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch after its consumed batches (a finished epoch: start the next)."""
        self.sampler.set_epoch(int(state["epoch"]))
        consumed = int(state["consumed"])
        self._skip = consumed if consumed < len(self) else 0
        self._skip_epoch = int(state["epoch"])


class EvalCollator:
    """Batches for generation: encoded prompts plus the problems to score against."""

    def __init__(
        self, codec: Codec | PreTrainedTokenizerBase, max_source_len: int, equation_notation: str = "infix"
    ) -> None:
        self.codec = as_codec(codec)
        self.max_source_len = max_source_len
        self.equation_notation = equation_notation

    def __call__(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        enc = self.codec.prompt_batch([i.source for i in items], self.max_source_len)
        batch = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "ids": [i.problem.id for i in items],
            "answers": [format_number(i.problem.answer) for i in items],
        }
        if any(i.format == EQUATION for i in items):
            # Equation completions are templates: scoring substitutes each problem's numbers back.
            batch["numbers"] = [problem_numbers(i.problem) for i in items]
            batch["notation"] = self.equation_notation
        return batch


def eval_items(problems: Sequence[Problem], fmt: str) -> list[EvalItem]:
    """Sources for greedy evaluation in a zero-shot format (no exemplars at test time)."""
    if fmt not in EVAL_FORMATS:
        raise ValueError(f"data.eval_format must be one of {list(EVAL_FORMATS)}, got {fmt!r}")
    return [EvalItem(p, build_source(p, fmt), fmt) for p in problems]  # type: ignore[arg-type]


class DistilledDataModule(pl.LightningDataModule):
    """Distilled rows -> training items in the configured formats, plus a validation hold-out.

    Built from `conf/config.yaml`'s `data` node with `hydra.utils.instantiate`; the rows, the
    student's tokenizer and the teacher signals are only known at train time and passed then.
    Gradient accumulation and the device count come from the Trainer the module is attached to.
    """

    def __init__(
        self,
        rows: Sequence[DistilledRow],
        tokenizer: PreTrainedTokenizerBase,
        *,
        formats: Sequence[str] = ("zero_shot_cot",),
        eval_format: str = "zero_shot_cot",
        num_exemplars: int = 2,
        exemplars: str = "rationales",
        val_fraction: float = 0.1,
        val_size: int | None = None,
        batch_size: int = 8,
        batch_size_by_format: Mapping[str, int] | None = None,
        eval_batch_size: int = 32,
        max_source_len: int | str = AUTO,
        max_target_len: int = 192,
        max_new_tokens: int | str = AUTO,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        signals: Signals | None = None,
        train_split: str | None = None,
        equation_notation: str = "infix",
        codec: Codec | None = None,
        packing: bool = False,
        packed_length: int | str = AUTO,
    ) -> None:
        super().__init__()
        if not rows:
            raise ValueError("no distilled rows to train on (did the distill stage keep anything?)")
        if signals is not None and len(signals) != len(rows):
            raise ValueError(f"teacher signals have {len(signals)} rows for {len(rows)} distilled rows")
        if equation_notation not in EQUATION_NOTATIONS:
            raise _config_error(
                f"data.equation_notation={equation_notation!r}: one of {list(EQUATION_NOTATIONS)}"
            )
        self.rows = list(rows)
        self.tokenizer = tokenizer
        # How sources and targets become the student's tensors (a T5 tokenizer alone: seq2seq).
        self.codec = codec if codec is not None else Seq2SeqCodec(tokenizer)
        if packing and not isinstance(self.codec, CausalCodec):
            raise _config_error(
                f"data.packing=true packs causal students' batches; this student is {self.codec.kind} "
                "(its encoder and decoder read separate sequences): set data.packing=false"
            )
        if packed_length != AUTO and not (isinstance(packed_length, int) and packed_length >= 2):
            raise _config_error(f"data.packed_length={packed_length!r}: a token count >= 2 or {AUTO!r}")
        self.packing = packing
        self.packed_length_setting = packed_length
        # Resolved in setup: the row width of packed batches (None: not packed).
        self.packed_length: int | None = None
        self.equation_notation = equation_notation
        self.formats = list(formats)
        self.eval_format = eval_format
        self.num_exemplars = num_exemplars
        if exemplars not in EXEMPLAR_SOURCES:
            raise _config_error(f"data.exemplars={exemplars!r}: one of {list(EXEMPLAR_SOURCES)}")
        self.exemplar_source = exemplars
        self.val_fraction = val_fraction
        self.val_size = val_size
        self.batch_size = micro_batch_size(self.formats, batch_size, batch_size_by_format)
        self.eval_batch_size = eval_batch_size
        for key, value in (("max_source_len", max_source_len), ("max_new_tokens", max_new_tokens)):
            if value != AUTO and not (isinstance(value, int) and value >= 1):
                raise _config_error(f"data.{key}={value!r}: a token count >= 1 or {AUTO!r}")
        # Resolved to token counts in setup (an "auto" value is derived from the data).
        self.max_source_len: int = max_source_len if isinstance(max_source_len, int) else 0
        self.max_new_tokens: int = max_new_tokens if isinstance(max_new_tokens, int) else 0
        self.source_len_setting = max_source_len
        self.new_tokens_setting = max_new_tokens
        self.max_target_len = max_target_len
        self.train_split = train_split
        self.stats: dict[str, Any] = {}
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.signals = signals
        self.signal_k: int | None = getattr(signals, "k", None)
        self.train_items: list[TrainItem] = []
        self.train_examples: list[Example] = []
        self.val_items: list[EvalItem] = []
        self.train_ids: set[str] = set()

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        by_problem: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(self.rows):
            by_problem[row.id].append(index)
        problems = [self.rows[indices[0]].problem for indices in by_problem.values()]
        train_ids, val_ids = split_problems_by_question(problems, self.val_fraction, self.seed, self.val_size)
        self.train_ids = set(train_ids)
        train_indices = [i for pid in sorted(train_ids) for i in by_problem[pid]]
        train_rows = [self.rows[i] for i in train_indices]
        val_problems: list[Problem] = []
        val_keys: set[str] = set()
        for pid in sorted(val_ids):
            problem = self.rows[by_problem[pid][0]].problem
            key = normalize_question(problem.question)
            if key not in val_keys:  # one validation item per question, however many ids repeat it
                val_keys.add(key)
                val_problems.append(problem)
        self.val_items = eval_items(val_problems, self.eval_format)
        skipped: Counter[str] = Counter()

        def items(budget: int | None) -> list[TrainItem]:
            skipped.clear()
            return build_train_items(
                train_rows,
                self.formats,
                self.num_exemplars,
                self.seed,
                row_indices=train_indices,
                max_source_tokens=budget,
                count_tokens=self.codec.count_source,
                require_split=self.train_split,
                equation_notation=self.equation_notation,
                skipped=skipped,
                exemplar_source=self.exemplar_source,
            )

        # Built with every exemplar first: the sources' real lengths decide the source budget.
        self.train_items = items(None)
        source_lengths = [self.codec.count_source(i.example.source) for i in self.train_items]
        val_lengths = [self.codec.count_source(i.source) for i in self.val_items]
        in_context = [
            n for n, i in zip(source_lengths, self.train_items, strict=True) if i.example.exemplar_ids
        ]
        if self.source_len_setting == AUTO:
            self.max_source_len = max([*source_lengths, *val_lengths, 1])
        elif in_context:
            fits = sum(n <= self.max_source_len for n in in_context) / len(in_context)
            if fits < COVERAGE:
                raise _config_error(
                    f"data.max_source_len={self.max_source_len} keeps all {self.num_exemplars} exemplars in only "
                    f"{100 * fits:.0f}% of the {len(in_context)} in-context training examples; they need "
                    f"{quantile(in_context, COVERAGE)} tokens for {100 * COVERAGE:.0f}% of them "
                    f"({max(in_context)} for all). Raise it, or set data.max_source_len={AUTO} to derive it"
                )
            if fits < 1:
                # The few longest drop trailing exemplars rather than lose the question to truncation.
                self.train_items = items(self.max_source_len)
        self.train_examples = [item.example for item in self.train_items]
        if not self.train_examples:
            raise ValueError(
                f"no training examples in data.formats={self.formats} from {len(train_rows)} training rows "
                f"(equation format: {dict(skipped)} rows skipped; it needs rows with a verified template)"
            )

        target_lengths = [self.codec.count_target(e.target) for e in self.train_examples]
        # Per format: short answer-only targets must not hide the chain-of-thought ones' length.
        by_format: dict[str, list[int]] = defaultdict(list)
        for example, length in zip(self.train_examples, target_lengths, strict=True):
            by_format[example.format].append(length)
        needed = min(max(quantile(v, COVERAGE) for v in by_format.values()), self.max_target_len)
        if self.new_tokens_setting == AUTO:
            self.max_new_tokens = max(1, min(max(target_lengths, default=1), self.max_target_len))
        elif self.max_new_tokens < needed:
            raise _config_error(
                f"data.max_new_tokens={self.max_new_tokens} is shorter than {100 * COVERAGE:.0f}% of the training "
                f"targets ({needed} tokens; data.max_target_len={self.max_target_len}): generation would stop "
                f"before their answer sentence. Raise it, or set data.max_new_tokens={AUTO} to derive it"
            )
        if self.packing:
            self.packed_length = self._packed_length(source_lengths, target_lengths)
        self.stats = self._stats(source_lengths, target_lengths, needed, len(val_problems))
        if self.packing:
            self.stats["packing"] = {
                "packed_length": self.packed_length,
                "packed_length_setting": self.packed_length_setting,
            }
        if EQUATION in self.formats:
            self.stats["equation"] = self._equation_stats(train_rows, skipped)

    def _packed_length(self, source_lengths: Sequence[int], target_lengths: Sequence[int]) -> int:
        """The packed row width: "auto" is the widest unpacked row; a number must hold every example."""
        if self.packed_length_setting == AUTO:
            return self.max_source_len + self.max_target_len
        assert isinstance(self.packed_length_setting, int)
        # A causal example is its (cut) prompt and its (cut) completion, EOS included.
        longest = max(
            min(source, self.max_source_len) + min(target, self.max_target_len)
            for source, target in zip(source_lengths, target_lengths, strict=True)
        )
        if self.packed_length_setting < longest:
            raise _config_error(
                f"data.packed_length={self.packed_length_setting} is shorter than the longest training example "
                f"({longest} tokens, prompt and completion): raise it, or set data.packed_length={AUTO} "
                "(data.max_source_len + data.max_target_len)"
            )
        return self.packed_length_setting

    def _equation_stats(self, train_rows: Sequence[DistilledRow], skipped: Counter[str]) -> dict[str, Any]:
        """How many equation examples were made and skipped, and the trivial baseline's template."""
        examples = [e for e in self.train_examples if e.format == EQUATION]
        used = {e.problem_id for e in examples}
        # The baseline template, in infix over the problems' N0..Nk, counted once per problem and template.
        templates = sorted(
            {
                (row.id, expression)
                for row in train_rows
                if row.id in used and (expression := _usable_expression(row.template)) is not None
            }
        )
        common = Counter(t for _, t in templates).most_common(1)
        return {
            "notation": self.equation_notation,
            "examples": len(examples),
            "problems": len(used),
            "rows": len(train_rows),
            "skipped_no_template": skipped["no_template"],
            "skipped_unusable_template": skipped["unusable_template"],
            "skipped_repeated_template": skipped["repeated_template"],
            "distinct_templates": len({t for _, t in templates}),
            "most_frequent_template": common[0][0] if common else None,
            "most_frequent_template_count": common[0][1] if common else 0,
        }

    def _stats(
        self, source_lengths: list[int], target_lengths: list[int], needed: int, n_val: int
    ) -> dict[str, Any]:
        """What setup derived and kept: written to the run's `student/train_stats.json`."""
        kept = [len(e.exemplar_ids) for e in self.train_examples if e.format.startswith("in_context")]
        return {
            "train_problems": len(self.train_ids),
            "train_examples": len(self.train_examples),
            "val_problems": n_val,
            "batch_size": self.batch_size,
            "max_source_len": self.max_source_len,
            "max_source_len_setting": self.source_len_setting,
            "source_tokens": {
                "p95": quantile(source_lengths, COVERAGE),
                "max": max(source_lengths, default=0),
            },
            "max_new_tokens": self.max_new_tokens,
            "max_new_tokens_setting": self.new_tokens_setting,
            "target_tokens": {
                "p95": quantile(target_lengths, COVERAGE),
                # the largest per-format 95th percentile, at most max_target_len: what generation must cover
                "needed": needed,
                "max": max(target_lengths, default=0),
            },
            "exemplars": {
                "source": self.exemplar_source if kept else None,
                "requested": self.num_exemplars if kept else 0,
                "in_context_examples": len(kept),
                "kept_mean": round(sum(kept) / len(kept), 4) if kept else None,
                "kept_min": min(kept, default=None),
                "all_kept_share": round(sum(k == self.num_exemplars for k in kept) / len(kept), 4)
                if kept
                else None,
            },
        }

    def train_collator(self) -> TrainCollator:
        return TrainCollator(
            self.codec,
            self.max_source_len,
            self.max_target_len,
            signals=self.signals,
            k=self.signal_k,
            packed_length=self.packed_length,
        )

    def train_dataloader(self) -> WindowedTrainLoader:
        trainer = self.trainer
        progress = None
        if trainer is not None:
            loop = trainer.fit_loop.epoch_loop

            def progress() -> int:
                return loop.batch_progress.current.processed

        return WindowedTrainLoader(
            self.train_items,
            self.train_collator(),
            batch_size=self.batch_size,
            accumulate=trainer.accumulate_grad_batches if trainer is not None else 1,
            shuffle=self.shuffle,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            num_workers=self.num_workers,
            progress=progress,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_items,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=EvalCollator(self.codec, self.max_source_len, self.equation_notation),
            num_workers=self.num_workers,
        )
