"""Packing causal students' training examples (`data.packing`): step time and tokens per second against
unpacked batches of the same examples.

    .venv/bin/python benchmarks/bench_packing.py                 # tiny_causal, zero_shot_cot, batch 8
    .venv/bin/python benchmarks/bench_packing.py --formats zero_shot_cot zero_shot_answer --batch 16
    .venv/bin/python benchmarks/bench_packing.py --size full      # SmolLM2-135M's full architecture

The student is `student=tiny_causal` (SmolLM2's architecture shrunk, its real tokenizer, random init;
`--size full` keeps the 135M architecture) trained through `StudentModule` under a Lightning `Trainer`
(the window loader, token counts, AdamW) on real PaLM SVAMP rationales (the recorded teacher, every
training problem). The runs see the same micro-batches of `--batch` examples in the same order, so
their step-time ratio is their throughput ratio; tokens per second count supervised (completion) tokens.
The runs alternate (twice each) so that drift in machine load hits all alike; one process, one run.

A packed batch applies the output layer to the target positions alone (gathered hidden states); the
unpacked path slices `[B, T+1, V]` logits (`logits_to_keep`) to `[B, T, V]`, which on a student whose
cost is mostly its 49k-token output layer is itself slower. So a third run, "unpacked, targets only",
is the unpacked layout with the output layer on exactly the target positions: packed against it is
what removing the padding alone buys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from mwp.config import register_resolvers  # noqa: E402
from mwp.config.schema.loss_terms import LossTerm  # noqa: E402
from mwp.data.artifact import read_distilled  # noqa: E402
from mwp.stages import load_config  # noqa: E402
from mwp.stages.distill import run_distill  # noqa: E402
from mwp.student.codec import CausalCodec  # noqa: E402
from mwp.student.datamodule import DistilledDataModule  # noqa: E402
from mwp.student.module import StudentModule  # noqa: E402
from tests.helpers import compose_config  # noqa: E402


class StepTimer(pl.Callback):
    """Wall time of each training step after `warmup`, and the supervised tokens of the timed ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.tokens = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)
            self.tokens += int((batch["labels"] != -100).sum())


class TargetsOnlyCodec(CausalCodec):
    """Unpacked batches, the output layer on exactly the `[B, T]` target positions (no slice after it)."""

    def logits(self, model, batch):
        width_t = batch["labels"].shape[1]
        first = batch["input_ids"].shape[1] - width_t - 1
        mask = batch["attention_mask"]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        keep = torch.arange(first, first + width_t, device=mask.device)
        return model(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids, logits_to_keep=keep
        ).logits


RUNS = {"unpacked": (False, False), "unpacked, targets only": (False, True), "packed": (True, False)}


def build(size: str):
    overrides = ["student=tiny_causal"]
    if size == "full":
        shrunk = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        overrides += [f"student.size.{key}=null" for key in (*shrunk, "num_key_value_heads", "head_dim")]
    return instantiate(compose_config(overrides).student, _convert_="all", seed=0)


def datamodule(rows, bundle, args, packing: bool) -> DistilledDataModule:
    dm = DistilledDataModule(
        rows,
        bundle.tokenizer,
        codec=bundle.codec,
        formats=args.formats,
        val_fraction=0.0,
        batch_size=args.batch,
        max_target_len=args.max_target_len,
        packing=packing,
        seed=0,
    )
    dm.setup("fit")
    return dm


def layout(dm: DistilledDataModule) -> dict[str, float]:
    """Rows, cells and padding of one epoch's micro-batches, and the time to collate them."""
    start = time.perf_counter()
    batches = list(dm.train_dataloader())
    seconds = time.perf_counter() - start
    cells = sum(b["attention_mask"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return {
        "batches": len(batches),
        "rows": sum(b["attention_mask"].shape[0] for b in batches),
        "cells": cells,
        "padding": 1 - real / cells,
        "collate_s": seconds,
    }


def train_steps(rows, args, packing: bool, targets_only: bool) -> tuple[list[float], int]:
    torch.manual_seed(0)
    bundle = build(args.size)
    if targets_only:
        bundle.codec = TargetsOnlyCodec(bundle.tokenizer, chat_template=bundle.codec.chat_template)
    dm = datamodule(rows, bundle, args, packing)
    module = StudentModule(
        bundle.model, bundle.tokenizer, codec=bundle.codec, lr=1e-4, terms=[LossTerm("ce")]
    )
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=args.steps + args.warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return timer.times, timer.tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-target-len", type=int, default=192)
    parser.add_argument("--formats", nargs="+", default=["zero_shot_cot"])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    args = parser.parse_args()
    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(["experiment=demo", "stage=distill"], run_dir=Path(tmp))
        run_distill(load_config(cfg), Path(tmp) / "distill")
        rows = read_distilled(Path(tmp) / "distill")

    bundle = build(args.size)
    plain_dm, packed_dm = datamodule(rows, bundle, args, False), datamodule(rows, bundle, args, True)
    device = "cuda" if torch.cuda.is_available() else f"cpu, torch threads {torch.get_num_threads()}"
    print(
        f"student tiny_causal ({'full 135M architecture' if args.size == 'full' else 'shrunk'}, random init, "
        f"{sum(p.numel() for p in bundle.model.parameters()) / 1e6:.1f}M parameters), {device}; "
        f"{len(rows)} real PaLM SVAMP rows -> {len(plain_dm.train_examples)} examples of {args.formats}, "
        f"batch {args.batch}, max_source_len {plain_dm.max_source_len}, max_target_len {args.max_target_len}, "
        f"packed_length {packed_dm.packed_length}; {args.steps} timed steps after {args.warmup} warm-up"
    )
    for name, dm in (("unpacked", plain_dm), ("packed", packed_dm)):
        shape = layout(dm)
        print(
            f"  epoch layout {name:<8}: {shape['batches']} micro-batches, {shape['rows']} rows, "
            f"{shape['cells']} token cells, {100 * shape['padding']:.1f}% padding, collated in "
            f"{shape['collate_s']:.2f} s"
        )

    times: dict[str, list[float]] = {name: [] for name in RUNS}
    tokens: dict[str, int] = dict.fromkeys(RUNS, 0)
    for _ in range(2):
        for name, (packing, targets_only) in RUNS.items():
            step_times, step_tokens = train_steps(rows, args, packing, targets_only)
            times[name] += step_times
            tokens[name] += step_tokens
    for name in RUNS:
        median = statistics.median(times[name])
        rate = tokens[name] / sum(times[name])
        print(
            f"  step time {name:<22}: {1000 * median:7.1f} ms (median of {len(times[name])}), "
            f"{rate:8.0f} supervised tokens/s"
        )
    assert len(set(tokens.values())) == 1, "every run must train on the same tokens"
    packed = statistics.median(times["packed"])
    for name in ("unpacked", "unpacked, targets only"):
        ratio = statistics.median(times[name]) / packed
        rate_ratio = sum(times[name]) / sum(times["packed"])
        print(f"  packed / {name:<22} throughput: {ratio:.2f}x by median step, {rate_ratio:.2f}x tokens/s")


if __name__ == "__main__":
    main()
