"""Step time and peak memory of one training step per student: SmolLM2-135M full fine-tuning against LoRA,
and the T5 students with and without LoRA, on the same real PaLM SVAMP rationales through each student's
own codec.

    .venv/bin/python benchmarks/bench_students.py                  # every student, 1 thread, batch 8
    .venv/bin/python benchmarks/bench_students.py --students smollm2_full smollm2_lora --threads 2

Each student runs in a fresh process (peak resident memory is that process's own): build, one warm-up
step, then `--steps` timed steps (forward, backward, AdamW over the trainable parameters). The median
step is reported, with the tokens of a batch (prompt + completion for a causal student, source and
target for T5) and the trainable parameters. Run it on a quiet machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]

STUDENTS = {
    "smollm2_full": ["student=smollm2_135m"],
    "smollm2_lora": ["student=smollm2_135m", "student/peft=lora"],
    "flan_t5_mini": ["student=flan_t5_mini"],
    "flan_t5_small": ["student=flan_t5_small", "student.pretrained=never"],
    # LoRA on a random-init T5 trains nothing useful (its frozen weights are noise): these rows measure
    # only what adapters cost or save per step against the full fine-tuning rows above
    "flan_t5_mini_lora": ["student=flan_t5_mini", "student/peft=lora"],
    "flan_t5_small_lora": ["student=flan_t5_small", "student.pretrained=never", "student/peft=lora"],
}


def one(name: str, steps: int, batch_size: int, threads: int) -> dict:
    import torch
    from hydra.utils import instantiate

    sys.path.insert(0, str(REPO))
    from mwp.data.artifact import read_distilled
    from mwp.data.formats import build_example
    from mwp.stages.distill import run_distill
    from mwp.student.fit import student_config
    from tests.helpers import typed_config

    torch.set_num_threads(threads)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_students"
    distill = out / "distill"
    if not (distill / "distilled.jsonl").is_file():
        run_distill(typed_config(["stage=distill", "dataset.limit=64"], run_dir=out), distill)
    rows = read_distilled(distill)[:batch_size]
    examples = [build_example(r.problem, r.rationale, "zero_shot_cot") for r in rows]
    bundle = instantiate(student_config(typed_config(STUDENTS[name])), _convert_="all")
    codec, model = bundle.codec, bundle.model
    model.train()
    batch = codec.train_batch([e.source for e in examples], [e.target for e in examples], 512, 128)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        logits = codec.logits(model, batch)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up the allocator and kernels
            times.append(time.perf_counter() - started)
    tokens = int(batch["attention_mask"].sum()) + (
        int((batch["labels"] != -100).sum()) if codec.kind == "seq2seq" else 0
    )
    return {
        "student": name,
        "kind": codec.kind,
        "pretrained": bundle.pretrained,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "trainable_m": round(sum(p.numel() for p in trainable) / 1e6, 2),
        "batch": batch_size,
        "tokens": tokens,
        "step_s_median": round(statistics.median(times), 2),
        "step_s": [round(t, 2) for t in times],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.batch_size, args.threads)))
        return
    rows = []
    for name in args.students:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{name} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{'student':<18} {'kind':<8} {'params M':>8} {'trainable M':>11} {'tokens':>6} {'step s':>7} {'peak GB':>7}"
    )
    for r in rows:
        print(
            f"{r['student']:<18} {r['kind']:<8} {r['parameters_m']:>8} {r['trainable_m']:>11} {r['tokens']:>6} "
            f"{r['step_s_median']:>7} {r['peak_rss_gb']:>7}"
        )


if __name__ == "__main__":
    main()
