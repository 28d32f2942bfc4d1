"""How often the answer judge agrees with a careful human reading of real completions.

The fixtures in tests/fixtures/judge_*.jsonl hold real completions, each with the answer read by
hand (null where the text commits to no single number):

- judge_palm: PaLM-540B few-shot CoT on SVAMP; rows point into the bundled data (MWP_DATA_DIR);
- judge_gsm8k: GSM8K gold solutions, also pointers into the bundled data;
- judge_smollm2: SmolLM2-135M-Instruct zero-shot CoT samples on MultiArith and GSM8K (temperature
  0.7; 32 at 128 tokens, 80 at 192);
- judge_zeroshot_cot: text-davinci-002 zero-shot CoT ("Let's think step by step", then "Therefore,
  the answer (arabic numerals) is") on GSM8K, MultiArith and SVAMP, from the logs of Kojima et al.
  (kojima-takeshi188/zero_shot_cot, log/<dataset>_zero_shot_cot.log, item "N" = the log's "Nst
  data");
- judge_plan_solve: text-davinci-003 zero-shot Plan-and-Solve+ completions on GSM8K, SVAMP and
  MultiArith (AGI-Edgerunners/Plan-and-Solve-Prompting, generated_result/, by ID);
- judge_hard: hand-written hard cases (not real text).

The two published logs carry no license, so their rows keep a pointer (repository@commit:file#item)
and a short excerpt, the completion's last lines, which is what the judge reads here (the answer
and the last number of a completion both lie in its last lines). A method agrees with a row when
both give no answer or `answers_match` holds.

Usage: python benchmarks/judge_agreement.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from mwp.paths import default_data_dir
from mwp.verify.compare import answers_match
from mwp.verify.extract import cut_run_on, extract_answer
from mwp.verify.numbers import find_numbers, parse_number

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SOURCES = (
    "judge_palm.jsonl",
    "judge_gsm8k.jsonl",
    "judge_smollm2.jsonl",
    "judge_zeroshot_cot.jsonl",
    "judge_plan_solve.jsonl",
    "judge_hard.jsonl",
)
# The sources of real model text (judge_gsm8k is human-written, judge_hard made up).
MODEL_SOURCES = (
    "judge_palm.jsonl",
    "judge_smollm2.jsonl",
    "judge_zeroshot_cot.jsonl",
    "judge_plan_solve.jsonl",
)


def completion(row: dict[str, Any], data_dir: Path) -> str:
    """The text a fixture row stands for: stored in the row, its excerpt, or looked up in the bundled data."""
    if "completion" in row:
        return row["completion"]
    if "excerpt" in row:
        return row["excerpt"]
    if row["source"] == "svamp_palm":
        return json.loads((data_dir / "teacher" / "svamp_palm" / row["file"]).read_text())[row["index"]]
    lines = (data_dir / "gsm8k" / row["file"]).read_text().splitlines()
    return json.loads(lines[row["index"]])["answer"]


def last_number(text: str) -> Fraction | None:
    """The plain baseline: the last number of the text, nothing else."""
    numbers = find_numbers(text)
    return parse_number(numbers[-1], percent="strip") if numbers else None


METHODS: dict[str, Callable[[str], Fraction | None]] = {
    "strict": lambda text: extract_answer(text, mode="strict"),
    "flexible": lambda text: extract_answer(text, mode="flexible"),
    "last number": last_number,
    "last number, run-on cut": lambda text: last_number(cut_run_on(text)),
}


def agrees(pred: Fraction | None, expected: str | None) -> bool:
    reading = None if expected is None else parse_number(expected)
    return (pred is None and reading is None) or answers_match(pred, reading)


def load_rows(name: str) -> list[dict[str, Any]]:
    path = FIXTURES / name
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def agreement(rows: list[dict[str, Any]], data_dir: Path) -> dict[str, int]:
    """How many rows each method agrees with."""
    texts = [completion(row, data_dir) for row in rows]
    return {
        method: sum(agrees(judge(t), row["expected"]) for t, row in zip(texts, rows, strict=True))
        for method, judge in METHODS.items()
    }


def _line(label: str, rows: list[dict[str, Any]], hits: dict[str, int]) -> str:
    none = sum(row["expected"] is None for row in rows)
    cells = [f"{hits[m]:>4} ({100 * hits[m] / len(rows):5.1f}%)".rjust(24) for m in METHODS]
    return f"{label:26} {len(rows):>4} {none:>9} " + " ".join(cells)


def main() -> None:
    data_dir = default_data_dir()
    print(f"{'fixture':26} {'n':>4} {'no answer':>9} " + " ".join(f"{m:>24}" for m in METHODS))
    all_rows: list[dict[str, Any]] = []
    totals = {m: 0 for m in METHODS}
    for name in SOURCES:
        rows = load_rows(name)
        hits = agreement(rows, data_dir)
        print(_line(name.removesuffix(".jsonl"), rows, hits))
        datasets = sorted({row["dataset"] for row in rows if "dataset" in row})
        for dataset in datasets if len(datasets) > 1 else ():
            subset = [row for row in rows if row.get("dataset") == dataset]
            print(_line(f"  {dataset}", subset, agreement(subset, data_dir)))
        all_rows += rows
        totals = {m: totals[m] + hits[m] for m in METHODS}
    print(_line("all", all_rows, totals))


if __name__ == "__main__":
    main()
