"""Lightning DataModule serving distilled data in Fu et al.'s four formats.

Validation problems are held out by problem (all their samples leave the training set), so the
checkpoint chosen on validation accuracy was never selected on data the student trained on.

Training batches come in groups of `accumulate` micro-batches, one group per optimizer step, and
every micro-batch carries its group's token counts (`group_n_tokens`): the module divides each
loss term by the tokens of the whole group, so accumulating micro-batches gives exactly the
gradient of one big batch however unevenly target lengths fall. With teacher signals (a
`SignalStore`, one row per distilled row) CoT examples also carry `teacher_ids`,
`teacher_logprobs` `[B, L, k]` and `teacher_mask` `[B, L]`; answer-only targets have none.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from mwp.data.formats import FORMATS, Example, build_example, build_source, sample_exemplars, token_counter
from mwp.data.problem import Problem
from mwp.signals import SparseBatch, SparseSignal, collate_sparse, supervised_positions
from mwp.verify.numbers import format_number

ANSWER_ONLY = {"zero_shot_answer", "in_context_answer"}
EVAL_FORMATS = ("zero_shot_cot", "zero_shot_answer")
# Token counts each training example contributes: labelled target tokens, and target tokens that
# carry a teacher distribution (what a sparse distillation term averages over).
COUNT_KEYS = ("labels", "teacher")


@dataclass
class EvalItem:
    problem: Problem
    source: str


def split_problem_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by problem id: (train ids, validation ids)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(set(ids))
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(ordered) > 1:
        n_val = 1
    return ordered[n_val:], ordered[:n_val]


@dataclass(frozen=True)
class TrainItem:
    """A training example and the distilled row whose teacher signal applies to its target (or None)."""

    example: Example
    signal_row: int | None = None


def build_train_items(
    rows: Sequence[dict[str, Any]],
    formats: Sequence[str],
    num_exemplars: int,
    seed: int,
    *,
    row_indices: Sequence[int] | None = None,
    max_source_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[TrainItem]:
    """One item per kept sample and CoT format, one per problem and answer-only format. CoT items
    carry their row's index (`row_indices[i]` for `rows[i]`, default i): the teacher signal covers
    the target only, whatever the source format."""
    if row_indices is not None and len(row_indices) != len(rows):
        raise ValueError(f"row_indices has {len(row_indices)} entries for {len(rows)} rows")
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"data.formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}")
    rng = random.Random(seed)
    pool = [(Problem.from_json(r["problem"]), r["rationale"]) for r in rows]
    items: list[TrainItem] = []
    answered: set[tuple[str, str]] = set()
    for position, (problem, rationale) in enumerate(pool):
        row_index = row_indices[position] if row_indices is not None else position
        for fmt in formats:
            if fmt in ANSWER_ONLY:
                if (problem.id, fmt) in answered:
                    continue
                answered.add((problem.id, fmt))
            exemplars = (
                sample_exemplars(pool, num_exemplars, rng, exclude_id=problem.id)
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


def encode_padded(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int) -> Any:
    """Tokenise a batch of texts, truncated to `max_len` and padded to the longest, as tensors."""
    return tokenizer(list(texts), max_length=max_len, truncation=True, padding=True, return_tensors="pt")


class Seq2SeqCollator:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_len: int, max_target_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        enc = encode_padded(self.tokenizer, [e.source for e in examples], self.max_source_len)
        target = encode_padded(self.tokenizer, [e.target for e in examples], self.max_target_len)
        labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


Signals = Sequence[SparseSignal]  # a SignalStore or a list: row r is the signal of distilled row r


def _signal_of(signals: Signals | None, item: TrainItem) -> SparseSignal | None:
    if signals is None or item.signal_row is None:
        return None
    return signals[item.signal_row]


def example_token_counts(
    items: Sequence[TrainItem],
    tokenizer: PreTrainedTokenizerBase,
    max_target_len: int,
    signals: Signals | None = None,
    k: int | None = None,
) -> np.ndarray:
    """`[N, len(COUNT_KEYS)]` tokens each item adds to a batch: labels, and teacher-covered labels.

    Computed with the collator's own tokenization and `collate_sparse`, one item at a time (an
    item's counts do not depend on what it is batched with)."""
    counts = np.zeros((len(items), len(COUNT_KEYS)), dtype=np.int64)
    if not items:
        return counts
    encoded = tokenizer([i.example.target for i in items], max_length=max_target_len, truncation=True)
    for n, (item, ids) in enumerate(zip(items, encoded["input_ids"], strict=True)):
        counts[n, 0] = len(ids)
        signal = _signal_of(signals, item)
        if signal is not None:
            labels = torch.tensor([ids], dtype=torch.long)
            teacher = SparseBatch.from_batch(collate_sparse([signal], labels.shape[1], labels=labels, k=k))
            counts[n, 1] = int(supervised_positions(labels, teacher).sum())
    return counts


class AccumulationBatchSampler:
    """Micro-batches of indices, in groups of `accumulate` (one optimizer step each, as Lightning
    groups batches from the start of every epoch; the last group may be shorter).

    Every index is yielded as `(index, group_counts)`, the summed token counts of its whole group, so
    each micro-batch knows the denominator of the group's token mean.
    """

    def __init__(
        self, counts: np.ndarray, batch_size: int, accumulate: int = 1, *, shuffle: bool = True, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if accumulate < 1:
            raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.counts) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
        n = len(self.counts)
        if self.shuffle:
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            )
            order_list = order.tolist()
        else:
            order_list = list(range(n))
        self.epoch += 1  # a trainer that calls set_epoch overrides this
        micro = [order_list[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        for start in range(0, len(micro), self.accumulate):
            group = micro[start : start + self.accumulate]
            totals = tuple(int(x) for x in self.counts[[i for batch in group for i in batch]].sum(axis=0))
            for batch in group:
                yield [(i, totals) for i in batch]


class TrainDataset(Dataset):
    """Training items, indexed by plain indices or by the sampler's `(index, group_counts)` keys."""

    def __init__(self, items: Sequence[TrainItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, tuple[int, ...]]) -> tuple[TrainItem, tuple[int, ...] | None]:
        if isinstance(key, tuple):
            return self.items[key[0]], key[1]
        return self.items[key], None


class TrainCollator:
    """Seq2seq tensors, the group's token counts and, with signals, the sparse teacher `[B, L, k]`."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_source_len: int,
        max_target_len: int,
        *,
        signals: Signals | None = None,
        k: int | None = None,
        accumulate: int = 1,
    ) -> None:
        self.seq2seq = Seq2SeqCollator(tokenizer, max_source_len, max_target_len)
        self.signals = signals
        self.k = k
        self.accumulate = accumulate

    def __call__(self, batch: Sequence[tuple[TrainItem, tuple[int, ...] | None]]) -> dict[str, Any]:
        items = [item for item, _ in batch]
        out: dict[str, Any] = self.seq2seq([item.example for item in items])
        if self.signals is not None:
            signals = [_signal_of(self.signals, item) for item in items]
            out.update(collate_sparse(signals, out["labels"].shape[1], labels=out["labels"], k=self.k))
        groups = {counts for _, counts in batch}
        if len(groups) == 1 and None not in groups:
            (counts,) = groups
            assert counts is not None
            out["group_n_tokens"] = {key: torch.tensor(c) for key, c in zip(COUNT_KEYS, counts, strict=True)}
            out["accumulate"] = self.accumulate
        return out


class EvalCollator:
    """Batches for generation: encoded sources plus the problems to score against."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_source_len = max_source_len

    def __call__(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        enc = encode_padded(self.tokenizer, [i.source for i in items], self.max_source_len)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "ids": [i.problem.id for i in items],
            "answers": [format_number(i.problem.answer) for i in items],
        }


def eval_items(problems: Sequence[Problem], fmt: str) -> list[EvalItem]:
    """Sources for greedy evaluation in a zero-shot format (no exemplars at test time)."""
    if fmt not in EVAL_FORMATS:
        raise ValueError(f"data.eval_format must be one of {list(EVAL_FORMATS)}, got {fmt!r}")
    return [EvalItem(p, build_source(p, fmt)) for p in problems]


class DistilledDataModule(pl.LightningDataModule):
    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        *,
        formats: Sequence[str] = ("zero_shot_cot",),
        eval_format: str = "zero_shot_cot",
        num_exemplars: int = 2,
        val_fraction: float = 0.1,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        max_source_len: int = 256,
        max_target_len: int = 192,
        num_workers: int = 0,
        seed: int = 0,
        accumulate: int = 1,
        signals: Signals | None = None,
    ) -> None:
        super().__init__()
        if not rows:
            raise ValueError("no distilled rows to train on (did the distill stage keep anything?)")
        if signals is not None and len(signals) != len(rows):
            raise ValueError(f"teacher signals have {len(signals)} rows for {len(rows)} distilled rows")
        if accumulate < 1:
            raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}")
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.formats = list(formats)
        self.eval_format = eval_format
        self.num_exemplars = num_exemplars
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        self.num_workers = num_workers
        self.seed = seed
        self.accumulate = accumulate
        self.signals = signals
        self.signal_k: int | None = getattr(signals, "k", None)
        self.train_items: list[TrainItem] = []
        self.train_counts = np.zeros((0, len(COUNT_KEYS)), dtype=np.int64)
        self.train_examples: list[Example] = []
        self.val_items: list[EvalItem] = []
        self.train_ids: set[str] = set()

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        by_problem: dict[str, list[int]] = defaultdict(list)
        for index, row in enumerate(self.rows):
            by_problem[row["id"]].append(index)
        train_ids, val_ids = split_problem_ids(list(by_problem), self.val_fraction, self.seed)
        self.train_ids = set(train_ids)
        train_indices = [i for pid in sorted(train_ids) for i in by_problem[pid]]
        # In-context sources drop exemplars to fit max_source_len rather than lose the question to truncation.
        self.train_items = build_train_items(
            [self.rows[i] for i in train_indices],
            self.formats,
            self.num_exemplars,
            self.seed,
            row_indices=train_indices,
            max_source_tokens=self.max_source_len,
            count_tokens=token_counter(self.tokenizer),
        )
        self.train_examples = [item.example for item in self.train_items]
        self.train_counts = example_token_counts(
            self.train_items, self.tokenizer, self.max_target_len, self.signals, self.signal_k
        )
        val_problems = [
            Problem.from_json(self.rows[by_problem[pid][0]]["problem"]) for pid in sorted(val_ids)
        ]
        self.val_items = eval_items(val_problems, self.eval_format)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TrainDataset(self.train_items),
            batch_sampler=AccumulationBatchSampler(
                self.train_counts, self.batch_size, self.accumulate, shuffle=True, seed=self.seed
            ),
            collate_fn=TrainCollator(
                self.tokenizer,
                self.max_source_len,
                self.max_target_len,
                signals=self.signals,
                k=self.signal_k,
                accumulate=self.accumulate,
            ),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_items,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=EvalCollator(self.tokenizer, self.max_source_len),
            num_workers=self.num_workers,
        )
