"""Train-step time of the tokenizer-free and on-policy losses against cross-entropy only.

    .venv/bin/python benchmarks/bench_losses_step.py            # Flan-T5-small sized student
    .venv/bin/python benchmarks/bench_losses_step.py --tiny     # a 2-layer d_model=64 student (fast)

One step = forward + loss + backward + AdamW step of a randomly initialised student (the real
Flan-T5 config and tokenizer, 32,128 vocabulary) on real GSM8K question/solution pairs, all
figures measured in one run on the same machine. Variants:
  ce         `combine([ce])`
  ce+kl      `combine([ce, kl])` against a sparse top-k teacher (reference for the sparse cost)
  ce+uld     `combine([ce, uld])` against the same sparse teacher (student softmax + top-k)
  ce+hybrid  `combine([ce, hybrid])`, half of each position's slots marked unshared (`in_vocab`)
  on-policy  `OnPolicySource` with fraction 1: the student samples `--max-new-tokens` tokens, a dense
             same-vocabulary teacher (another random init of the student's architecture) scores
             them, forward KL; the sampling share is the time in `generate` over the step time.
The sparse targets' values are random (`bench_kl.make_sparse_signals`): their size is what the cost
depends on. Reported: median seconds per step and the ratio to `ce`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_kl import build_student, make_inputs, make_sparse_signals

from mwp.config.schema.loss_terms import LossTerm
from mwp.signals import SparseBatch, collate_sparse
from mwp.signals.on_policy import OnPolicySource
from mwp.student.losses import combine

VARIANTS = ("ce", "ce+kl", "ce+uld", "ce+hybrid", "on-policy")
TERMS = {
    "ce": [LossTerm("ce")],
    "ce+kl": [LossTerm("ce"), LossTerm("kl")],
    "ce+uld": [LossTerm("ce"), LossTerm("uld", tail="none")],
    "ce+hybrid": [LossTerm("ce"), LossTerm("hybrid")],
    "on-policy": [LossTerm("kl")],
}


def sparse_teacher(labels: torch.Tensor, vocab: int, k: int, unshared: bool) -> SparseBatch:
    batch = collate_sparse(make_sparse_signals(labels, vocab, k), labels.shape[1], labels=labels)
    if unshared:
        batch["teacher_in_vocab"] = torch.arange(k).expand_as(batch["teacher_ids"]) < k // 2
    return SparseBatch.from_batch(batch)


def timed_step(
    model: Any,
    optimizer: Any,
    inputs: dict[str, torch.Tensor],
    variant: str,
    teacher: Any,
    source: OnPolicySource | None,
) -> tuple[float, float]:
    """Seconds of one step, and of its sampling."""
    start = time.perf_counter()
    sampling = 0.0
    if source is not None:
        inputs = source.targets(inputs, model, step=0)
        sampling = time.perf_counter() - start
        teacher = source.signal(inputs)
    labels = inputs["labels"]
    logits = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        decoder_input_ids=model._shift_right(labels),
    ).logits
    combine(TERMS[variant], logits, labels, teacher).total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, sampling


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a 2-layer d_model=64 student instead of Flan-T5-small"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--src-len", type=int, default=96)
    parser.add_argument("--tgt-len", type=int, default=96)
    parser.add_argument("--k", type=int, default=20, help="sparse teacher slots per position")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="on-policy sample length")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = build_student(args.tiny)
    inputs = make_inputs(tokenizer, args.batch, args.src_len, args.tgt_len)
    vocab = model.config.vocab_size
    teacher_model, _ = build_student(args.tiny)
    torch.manual_seed(1)
    teacher_model.init_weights()
    results: dict[str, tuple[float, float]] = {}
    for variant in VARIANTS:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        teacher = None
        if variant in ("ce+kl", "ce+uld", "ce+hybrid"):
            teacher = sparse_teacher(inputs["labels"], vocab, args.k, unshared=variant == "ce+hybrid")
        source = None
        if variant == "on-policy":
            source = OnPolicySource(teacher_model, fraction=1.0, max_new_tokens=args.max_new_tokens)
        timed_step(model, optimizer, inputs, variant, teacher, source)  # warm-up, creates AdamW state
        runs = [timed_step(model, optimizer, inputs, variant, teacher, source) for _ in range(args.steps)]
        step = statistics.median(r[0] for r in runs)
        sampling = statistics.median(r[1] / r[0] for r in runs)
        results[variant] = (step, sampling)
        del optimizer

    size = "tiny (2 layers, d_model 64)" if args.tiny else "Flan-T5-small (77M)"
    print(
        f"student {size}, batch {args.batch}, source/target {args.src_len}/{args.tgt_len} tokens, k={args.k}, "
        f"on-policy samples {args.max_new_tokens} tokens, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    base = results["ce"][0]
    for variant, (step, sampling) in results.items():
        extra = f"  sampling {100 * sampling:.0f}% of the step" if variant == "on-policy" else ""
        print(f"{variant:10s} {step:7.3f} s/step  x{step / base:5.2f} vs ce{extra}")


if __name__ == "__main__":
    main()
