"""Greedy BIG-Bench Hard evaluation: per-task accuracy (strict and flexible extraction) and the macro average.

Fu et al. report how much general reasoning a specialised student loses on BBH; this scores any
generation model (a seq2seq student or a causal LM) on the 3-shot CoT prompt or the answer-only
prompt, with `mwp.verify.bbh_answers` matching each task's kind of answer.

Over-long prompts. A 3-shot CoT prompt is often longer than a T5 encoder's `max_source_len` (most
tasks' prompts exceed 512 tokens). A prompt that does not fit is shortened from the left, keeping
the question: whole exemplars are dropped from the front (the oldest first) until it fits, and a
question that is too long even alone keeps its last `max_source_len` tokens. Each task reports how
many sources were `shortened` (fewer exemplars) and `truncated` (cut mid-text), so a table never
hides that a model saw fewer shots than the prompt has.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mwp.data.bbh import BBHExample, PromptStyle, load_bbh_prompt, load_bbh_task, resolve_bbh_tasks
from mwp.data.io import write_jsonl
from mwp.evaluation.scoring import Accuracies
from mwp.progress import Progress
from mwp.student.codec import Codec, as_codec
from mwp.verify.bbh_answers import bbh_matches, extract_bbh_answer

__all__ = ["BBHResult", "BBHTaskResult", "evaluate_bbh", "fit_source", "format_bbh_table"]

BBH_SPLIT = "all"  # BBH has one split: every example of a task is a test example


@dataclass
class BBHTaskResult(Accuracies):
    task: str
    answer_type: str
    size: int
    strict_correct: int = 0
    flexible_correct: int = 0
    shortened: int = 0  # sources that kept fewer exemplars than the prompt has
    truncated: int = 0  # sources cut mid-text (the question alone was too long)
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": BBH_SPLIT,
            "answer_type": self.answer_type,
            "size": self.size,
            "strict_acc": round(self.strict_acc, 4),
            "flexible_acc": round(self.flexible_acc, 4),
            "shortened": self.shortened,
            "truncated": self.truncated,
        }


@dataclass
class BBHResult:
    model: str
    prompt: PromptStyle
    max_source_len: int
    tasks: list[BBHTaskResult]
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return sum(t.size for t in self.tasks)

    @property
    def macro_strict_acc(self) -> float:
        """The unweighted mean over tasks (BBH's convention: a 146-example task counts as much as a 250 one)."""
        return sum(t.strict_acc for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def macro_flexible_acc(self) -> float:
        return sum(t.flexible_acc for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def seconds_per_1000(self) -> float:
        return 1000 * self.seconds / self.size if self.size else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": "bbh",
            "model": self.model,
            "prompt": self.prompt,
            "split": BBH_SPLIT,
            "max_source_len": self.max_source_len,
            "size": self.size,
            "num_tasks": len(self.tasks),
            "macro_strict_acc": round(self.macro_strict_acc, 4),
            "macro_flexible_acc": round(self.macro_flexible_acc, 4),
            "seconds": round(self.seconds, 2),
            "seconds_per_1000": round(self.seconds_per_1000, 2),
            "tasks": [t.summary() for t in self.tasks],
        }


def fit_source(
    codec: Codec, render: Any, num_exemplars: int, max_source_len: int
) -> tuple[list[int], int, bool]:
    """Token ids of the longest prompt that fits: `render(k)` with k = num_exemplars, ..., 0 exemplars
    (as the student reads it: a causal student's chat template included).

    Returns (ids, exemplars kept, truncated); when even k=0 is too long its last `max_source_len`
    tokens are kept (the end holds the question and the answer cue).
    """
    for kept in range(num_exemplars, -1, -1):
        ids = codec.source_ids(render(kept))
        if len(ids) <= max_source_len:
            return ids, kept, False
    return ids[-max_source_len:], 0, True


@torch.no_grad()
def evaluate_bbh(
    model: PreTrainedModel,
    codec: Codec | PreTrainedTokenizerBase,
    tasks: str | Sequence[str] = "all",
    *,
    prompt: PromptStyle = "cot",
    limit_per_task: int | None = None,
    batch_size: int = 16,
    max_source_len: int = 512,
    max_new_tokens: int = 128,
    data_dir: str | Path | None = None,
    model_name: str = "model",
) -> BBHResult:
    """Greedy-decode the first `limit_per_task` examples (all by default) of each task and score them.

    Works for both kinds of student through their `Codec` (a tokenizer alone: a seq2seq model): the
    encoder reads the prompt, or a causal LM continues it (left padding, its chat template if it was
    trained with one).
    """
    codec = as_codec(codec)
    names = resolve_bbh_tasks(tasks)
    result = BBHResult(model_name, prompt, max_source_len, [])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    start = time.perf_counter()
    for task in names:
        examples = load_bbh_task(task, data_dir, limit=limit_per_task)
        few_shot = load_bbh_prompt(task, data_dir)
        task_result = BBHTaskResult(task, examples[0].answer_type if examples else "", size=len(examples))
        sources: list[tuple[BBHExample, list[int], int]] = []
        for example in examples:
            ids, kept, cut = fit_source(
                codec,
                lambda k, q=example.input, p=few_shot: p.render(q, prompt, num_exemplars=k),
                len(few_shot.exemplars),
                max_source_len,
            )
            task_result.shortened += kept < len(few_shot.exemplars)
            task_result.truncated += cut
            sources.append((example, ids, kept))
        # Longest first: similar lengths share a batch (less padding), and memory peaks at once.
        order = sorted(range(len(sources)), key=lambda i: -len(sources[i][1]))
        texts: dict[int, str] = {}
        bar = Progress(len(order), f"bbh {task} ({prompt})", unit="example")
        for offset in range(0, len(order), batch_size):
            chunk = order[offset : offset + batch_size]
            prompts = codec.pad_prompts([sources[i][1] for i in chunk])
            completions = codec.complete(
                model,
                {k: v.to(device) for k, v in prompts.items()},
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
            for i, text in zip(chunk, completions, strict=True):
                texts[i] = text
            bar.update(len(chunk))
        bar.close()
        for i, (example, _ids, kept) in enumerate(sources):
            text = texts[i]
            strict = extract_bbh_answer(text, example.answer_type, "strict")
            flexible = extract_bbh_answer(text, example.answer_type, "flexible")
            ok_strict = bbh_matches(strict, example.target, example.answer_type)
            ok_flexible = bbh_matches(flexible, example.target, example.answer_type)
            task_result.strict_correct += ok_strict
            task_result.flexible_correct += ok_flexible
            task_result.predictions.append(
                {
                    "id": example.id,
                    "target": example.target,
                    "completion": text,
                    "exemplars": kept,
                    "pred_strict": strict,
                    "pred_flexible": flexible,
                    "correct_strict": ok_strict,
                    "correct_flexible": ok_flexible,
                }
            )
        result.tasks.append(task_result)
    result.seconds = time.perf_counter() - start
    model.train(was_training)
    return result


def save_bbh_predictions(result: BBHResult, out_dir: Path, label: str = "student") -> Path:
    """All tasks' predictions in one JSONL file (each row's `id` names its task); the student's file keeps
    its plain name, another model's carries its label."""
    suffix = "" if label == "student" else f"_{label}"
    path = out_dir / f"predictions_bbh_{result.prompt}{suffix}.jsonl"
    write_jsonl(path, (row for task in result.tasks for row in task.predictions))
    return path


def format_bbh_table(result: BBHResult, title: str | None = None) -> str:
    """Per-task rows and a macro-average row; the title names the model, prompt and source length."""
    title = title or (
        f"BBH ({result.prompt} prompt, split {BBH_SPLIT}, max_source_len {result.max_source_len}) "
        f"of {result.model}: {result.size} examples in {result.seconds:.1f} s "
        f"({result.seconds_per_1000:.1f} s per 1,000)"
    )
    header = ("task", "answer type", "size", "strict acc", "flexible acc", "shortened", "truncated")
    rows = [
        (
            t.task,
            t.answer_type,
            str(t.size),
            f"{100 * t.strict_acc:.1f}%",
            f"{100 * t.flexible_acc:.1f}%",
            str(t.shortened),
            str(t.truncated),
        )
        for t in result.tasks
    ]
    macro = (
        f"macro average ({len(result.tasks)} tasks)",
        "",
        str(result.size),
        f"{100 * result.macro_strict_acc:.1f}%",
        f"{100 * result.macro_flexible_acc:.1f}%",
        str(sum(t.shortened for t in result.tasks)),
        str(sum(t.truncated for t in result.tasks)),
    )
    widths = [max(len(h), *(len(r[i]) for r in [*rows, macro])) for i, h in enumerate(header)]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt_row(cells: Sequence[str]) -> str:
        return "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))

    return "\n".join(
        [title, line, fmt_row(header), line, *(fmt_row(r) for r in rows), line, fmt_row(macro), line]
    )
