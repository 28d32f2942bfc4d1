"""Lightning DataModule serving distilled data in Fu et al.'s four formats.

Validation problems are held out by problem (all their samples leave the training set), so the
checkpoint chosen on validation accuracy was never selected on data the student trained on.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from mwp.data.formats import FORMATS, Example, build_example, build_source, sample_exemplars, token_counter
from mwp.data.problem import Problem
from mwp.verify.numbers import format_number

ANSWER_ONLY = {"zero_shot_answer", "in_context_answer"}
EVAL_FORMATS = ("zero_shot_cot", "zero_shot_answer")


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


def build_training_examples(
    rows: Sequence[dict[str, Any]],
    formats: Sequence[str],
    num_exemplars: int,
    seed: int,
    *,
    max_source_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Example]:
    """One example per kept sample and CoT format; one per problem and answer-only format."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"data.formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}")
    rng = random.Random(seed)
    pool = [(Problem.from_json(r["problem"]), r["rationale"]) for r in rows]
    examples: list[Example] = []
    answered: set[tuple[str, str]] = set()
    for problem, rationale in pool:
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
            examples.append(
                build_example(
                    problem,
                    rationale,
                    fmt,
                    exemplars,
                    max_source_tokens=max_source_tokens if exemplars else None,
                    count_tokens=count_tokens,
                )
            )
    return examples


class Seq2SeqCollator:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_len: int, max_target_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [e.source for e in examples],
            max_length=self.max_source_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        target = self.tokenizer(
            [e.target for e in examples],
            max_length=self.max_target_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


class EvalCollator:
    """Batches for generation: encoded sources plus the problems to score against."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_source_len = max_source_len

    def __call__(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        enc = self.tokenizer(
            [i.source for i in items],
            max_length=self.max_source_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
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
    ) -> None:
        super().__init__()
        if not rows:
            raise ValueError("no distilled rows to train on (did the distill stage keep anything?)")
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
        self.train_examples: list[Example] = []
        self.val_items: list[EvalItem] = []
        self.train_ids: set[str] = set()

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            by_problem[row["id"]].append(row)
        train_ids, val_ids = split_problem_ids(list(by_problem), self.val_fraction, self.seed)
        self.train_ids = set(train_ids)
        train_rows = [r for pid in sorted(train_ids) for r in by_problem[pid]]
        # In-context sources drop exemplars to fit max_source_len rather than lose the question to truncation.
        self.train_examples = build_training_examples(
            train_rows,
            self.formats,
            self.num_exemplars,
            self.seed,
            max_source_tokens=self.max_source_len,
            count_tokens=token_counter(self.tokenizer),
        )
        val_problems = [Problem.from_json(by_problem[pid][0]["problem"]) for pid in sorted(val_ids)]
        self.val_items = eval_items(val_problems, self.eval_format)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_examples,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=Seq2SeqCollator(self.tokenizer, self.max_source_len, self.max_target_len),
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_items,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=EvalCollator(self.tokenizer, self.max_source_len),
            num_workers=self.num_workers,
        )
