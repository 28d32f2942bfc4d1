"""Greedy evaluation of a student on benchmark sets: accuracy with strict and flexible extraction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from mwp.data.datamodule import encode_padded, eval_items
from mwp.data.io import write_jsonl
from mwp.data.problem import Problem
from mwp.verify.compare import answers_match
from mwp.verify.extract import extract_answer
from mwp.verify.numbers import format_number


@dataclass
class EvalResult:
    dataset: str
    split: str
    role: str  # "in-distribution" or "out-of-distribution"
    size: int
    strict_correct: int = 0
    flexible_correct: int = 0
    # problems of the split not scored because their normalised question was seen in training
    dropped: int = 0
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def strict_acc(self) -> float:
        return self.strict_correct / self.size if self.size else 0.0

    @property
    def flexible_acc(self) -> float:
        return self.flexible_correct / self.size if self.size else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "role": self.role,
            "size": self.size,
            "strict_acc": round(self.strict_acc, 4),
            "flexible_acc": round(self.flexible_acc, 4),
            "dropped": self.dropped,
        }


@torch.no_grad()
def evaluate_problems(
    model: T5ForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    *,
    dataset: str,
    split: str,
    role: str,
    fmt: str = "zero_shot_cot",
    batch_size: int = 32,
    max_source_len: int | None = 256,
    max_new_tokens: int = 128,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
    dropped: int = 0,
) -> EvalResult:
    """Greedy-decode every problem; `exclude_ids` (training ids) are never scored.

    Content overlap is the caller's job (`mwp.data.dedup.drop_seen`, before any limit): `dropped`
    is what it removed, added to the id overlap in the result. `max_source_len=None` never cuts a source.
    """
    kept = [p for p in problems if p.id not in exclude_ids]
    result = EvalResult(dataset, split, role, size=len(kept), dropped=dropped + len(problems) - len(kept))
    items = eval_items(kept, fmt)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bar = tqdm(total=len(items), desc=f"eval {dataset}/{split}", unit="problem", dynamic_ncols=True)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        enc = encode_padded(tokenizer, [i.source for i in chunk], max_source_len).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        for item, text in zip(chunk, tokenizer.batch_decode(out, skip_special_tokens=True), strict=True):
            strict = extract_answer(text, mode="strict")
            flexible = extract_answer(text, mode="flexible")
            ok_strict = answers_match(strict, item.problem.answer)
            ok_flexible = answers_match(flexible, item.problem.answer)
            result.strict_correct += ok_strict
            result.flexible_correct += ok_flexible
            result.predictions.append(
                {
                    "id": item.problem.id,
                    "question": item.problem.question,
                    "answer": format_number(item.problem.answer),
                    "completion": text,
                    "pred_strict": format_number(strict),
                    "pred_flexible": format_number(flexible),
                    "correct_strict": ok_strict,
                    "correct_flexible": ok_flexible,
                }
            )
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return result


def save_predictions(result: EvalResult, out_dir: Path) -> Path:
    path = out_dir / f"predictions_{result.dataset}_{result.split}.jsonl"
    write_jsonl(path, result.predictions)
    return path


def format_table(results: Sequence[EvalResult], title: str = "Evaluation") -> str:
    header = ("dataset", "split", "role", "size", "dropped", "strict acc", "flexible acc")
    rows = [
        (
            r.dataset,
            r.split,
            r.role,
            str(r.size),
            str(r.dropped),
            f"{100 * r.strict_acc:.1f}%",
            f"{100 * r.flexible_acc:.1f}%",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt_row(cells: Sequence[str]) -> str:
        return "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))

    return "\n".join([title, line, fmt_row(header), line, *(fmt_row(r) for r in rows), line])
