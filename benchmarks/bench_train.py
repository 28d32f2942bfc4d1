"""Cost of the training wiring: the Lightning module against a plain loop, KL against CE, T5's own
cross-entropy, and how fast a bad config fails.

    .venv/bin/python benchmarks/bench_train.py            # all four figures
    .venv/bin/python benchmarks/bench_train.py --steps 10 # fewer timed steps

1. Step throughput: `StudentModule` under `lightning.pytorch.Trainer` (built from the real composed
   config: window loader, all-reduced token counts, AdamW + scheduler, gradient clipping, logging)
   against a plain PyTorch loop over the same model, the same collated batches and the same
   `combine` loss, with the same optimiser, scheduler and clipping. Goal: Lightning >= 0.95x.
2. `ce_kl` with a sparse top-k teacher (k=20 slots, random values, the label among the ids) against
   `ce`, both through the Lightning module. Goal: <= 1.15x the CE step.
3. Peak memory of one step with T5 computing its own [B, L, V] cross-entropy (`labels=`, what the
   module did before) against decoder inputs only (what it does now), torch profiler allocator peak.
4. Validation time of a bad config (`optim.lr=-1`) in a fresh process, before any model or data.

The student is `flan_t5_mini` (random init, the real Flan-T5 tokenizer and vocabulary) on real
PaLM SVAMP rationales. Ratios are measured in one run, steps interleaved where they can be.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
from transformers import get_scheduler  # noqa: E402

from mwp.config import register_resolvers  # noqa: E402
from mwp.config.schema.loss_terms import LossTerm  # noqa: E402
from mwp.data.artifact import read_distilled  # noqa: E402
from mwp.signals import SparseSignal, StoredSparseSource  # noqa: E402
from mwp.signals.build import target_text  # noqa: E402
from mwp.stages import load_config  # noqa: E402
from mwp.stages.distill import run_distill  # noqa: E402
from mwp.student.datamodule import DistilledDataModule, WindowedTrainLoader  # noqa: E402
from mwp.student.losses import combine  # noqa: E402
from mwp.student.model import build_student  # noqa: E402
from mwp.student.module import StudentModule  # noqa: E402
from tests.helpers import compose_config  # noqa: E402

BATCH = 8


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def student(cfg):
    size = {k: v for k, v in cfg.student.size.items() if v is not None}
    return build_student(
        "x", pretrained="never", fallback_config=cfg.student.fallback_config, size=size, seed=0
    )


def datamodule(cfg, rows, tokenizer, signals=None) -> DistilledDataModule:
    dm = DistilledDataModule(
        rows,
        tokenizer,
        val_fraction=0.0,
        batch_size=BATCH,
        max_source_len=cfg.data.max_source_len,
        max_target_len=cfg.data.max_target_len,
        signals=signals,
        seed=0,
    )
    dm.setup("fit")
    return dm


def micro_batches(cfg, rows, tokenizer, shuffle: bool = True) -> WindowedTrainLoader:
    dm = datamodule(cfg, rows, tokenizer)
    return WindowedTrainLoader(dm.train_items, dm.train_collator(), batch_size=BATCH, shuffle=shuffle, seed=0)


def forward(model, batch, with_labels: bool = False) -> torch.Tensor:
    labels = batch["labels"]
    inputs = {"labels": labels} if with_labels else {"decoder_input_ids": model._shift_right(labels)}
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **inputs).logits


def sparse_signals(rows, tokenizer, max_len: int, k: int = 20) -> list[SparseSignal]:
    g = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)
    out = []
    for row in rows:
        ids_list = tokenizer(target_text(row), max_length=max_len, truncation=True)["input_ids"]
        target = torch.tensor(ids_list)
        ids = torch.randint(0, vocab, (len(target), k), generator=g)
        ids[:, 0] = target
        logprobs = torch.log_softmax(torch.randn(len(target), k, generator=g) * 2, -1) - 0.1
        mask = torch.rand(len(target), generator=g) < 0.7
        out.append(SparseSignal(ids=ids, logprobs=logprobs, mask=mask, target_ids=target))
    return out


def lightning_steps(cfg, rows, terms, signals, steps: int, warmup: int) -> list[float]:
    bundle = student(cfg)
    dm = datamodule(cfg, rows, bundle.tokenizer, signals)
    module = StudentModule(
        bundle.model,
        bundle.tokenizer,
        lr=1e-4,
        warmup_ratio=0.05,
        scheduler="linear",
        terms=terms,
        signal_source=StoredSparseSource() if signals else None,
    )
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return timer.times


def plain_steps(cfg, rows, terms, steps: int, warmup: int) -> list[float]:
    bundle = student(cfg)
    model = bundle.model.train()
    loader = micro_batches(cfg, rows, bundle.tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=steps + warmup)
    times: list[float] = []
    batches = iter(loader)
    for step in range(steps + warmup):
        batch = next(batches)
        start = time.perf_counter()
        loss = combine(terms, forward(model, batch), batch["labels"]).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def step_peak(cfg, rows, with_labels: bool) -> int:
    """Allocator peak (bytes) of one forward+loss+backward step after a warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    bundle = student(cfg)
    model = bundle.model.train()
    batch = next(iter(micro_batches(cfg, rows, bundle.tokenizer, shuffle=False)))
    terms = [LossTerm("ce")]

    def step() -> None:
        combine(terms, forward(model, batch, with_labels), batch["labels"]).total.backward()
        model.zero_grad(set_to_none=False)

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)


def validation_time() -> float:
    script = (
        "import time; t = time.perf_counter()\n"
        "from tests.helpers import compose_config\nfrom mwp.config import ConfigError\nfrom mwp.stages import load_config\n"
        "try:\n    load_config(compose_config(['optim.lr=-1']))\nexcept ConfigError:\n    pass\n"
        "print(time.perf_counter() - t)\n"
    )
    times = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    register_resolvers()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(["experiment=demo", "stage=distill"], run_dir=Path(tmp))
        run_distill(load_config(cfg), Path(tmp) / "distill")
        rows = read_distilled(Path(tmp) / "distill")
    ce = [LossTerm("ce")]
    kl = [LossTerm("ce"), LossTerm("kl")]
    print(
        f"student flan_t5_mini (random init), batch {BATCH}, {len(rows)} real PaLM SVAMP rows, "
        f"{args.steps} timed steps after {args.warmup} warm-up, torch threads {torch.get_num_threads()}"
    )

    signals = sparse_signals(rows, student(cfg).tokenizer, cfg.data.max_target_len)
    runs = {"plain": [], "lightning": [], "lightning ce_kl": []}
    for _ in range(2):  # alternate, so drift in machine load hits both alike
        runs["plain"] += plain_steps(cfg, rows, ce, args.steps, args.warmup)
        runs["lightning"] += lightning_steps(cfg, rows, ce, None, args.steps, args.warmup)
        runs["lightning ce_kl"] += lightning_steps(cfg, rows, kl, signals, args.steps, args.warmup)
    median = {k: statistics.median(v) for k, v in runs.items()}
    for name, value in median.items():
        print(f"  step time {name:<16} {1000 * value:8.1f} ms (median of {len(runs[name])})")
    print(f"  Lightning throughput / plain loop: {median['plain'] / median['lightning']:.3f}x (goal >= 0.95)")
    print(
        f"  ce_kl sparse step / ce step:       {median['lightning ce_kl'] / median['lightning']:.3f}x (goal <= 1.15)"
    )

    before, after = step_peak(cfg, rows, True), step_peak(cfg, rows, False)
    print(f"  peak step memory, T5 computes its own CE (labels=): {before / 2**20:8.1f} MiB")
    print(
        f"  peak step memory, decoder inputs only (now):         {after / 2**20:8.1f} MiB  ({after / before:.3f}x)"
    )
    print(
        f"  bad config (optim.lr=-1) fails in {1000 * validation_time():.0f} ms (fresh process, imports included)"
    )


if __name__ == "__main__":
    main()
