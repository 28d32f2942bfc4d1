"""How often the answer judge agrees with a careful human reading of real completions.

The fixtures in tests/fixtures/judge_*.jsonl hold real completions (PaLM-540B few-shot CoT on
SVAMP, GSM8K gold solutions, SmolLM2-135M zero-shot CoT samples on MultiArith/GSM8K, and
hand-written hard cases), each with the answer read by hand (null where the text commits to no
single number). PaLM and GSM8K rows point into the bundled data (MWP_DATA_DIR) instead of copying
it. A method agrees with a row when both give no answer or `answers_match` holds.

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
SOURCES = ("judge_palm.jsonl", "judge_gsm8k.jsonl", "judge_smollm2.jsonl", "judge_hard.jsonl")


def completion(row: dict[str, Any], data_dir: Path) -> str:
    """The text a fixture row stands for: stored in the row, or looked up in the bundled data."""
    if "completion" in row:
        return row["completion"]
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


def main() -> None:
    data_dir = default_data_dir()
    header = f"{'fixture':22} {'n':>4} {'no answer':>9} " + " ".join(f"{m:>24}" for m in METHODS)
    print(header)
    totals = {m: 0 for m in METHODS}
    total_n = 0
    for name in SOURCES:
        path = FIXTURES / name
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
        texts = [completion(row, data_dir) for row in rows]
        expected = [row["expected"] for row in rows]
        cells = []
        for method, judge in METHODS.items():
            hits = sum(agrees(judge(t), e) for t, e in zip(texts, expected, strict=True))
            totals[method] += hits
            cells.append(f"{hits:>4} ({100 * hits / len(rows):5.1f}%)".rjust(24))
        total_n += len(rows)
        none = sum(e is None for e in expected)
        print(f"{name.removesuffix('.jsonl'):22} {len(rows):>4} {none:>9} " + " ".join(cells))
    cells = [f"{totals[m]:>4} ({100 * totals[m] / total_n:5.1f}%)".rjust(24) for m in METHODS]
    print(f"{'all':22} {total_n:>4} {'':>9} " + " ".join(cells))


if __name__ == "__main__":
    main()
