"""Does mwp's BBH matcher score a real model's outputs as the BBH authors did?

Suzgun et al. (2022) publish code-davinci-002's completions for every BBH task, answer-only and
CoT, with the accuracy they computed for each (suzgunmirac/BIG-Bench-Hard,
`code-davinci-002-outputs/code-davinci-002-{direct,cot}/<task>_few_shot_template_0-255000.json`
and `..._eval_metrics.jsonl`). This script scores those completions with `extract_bbh_answer` +
`bbh_matches` in both modes and prints, per task and prompt: n, the published accuracy, mwp strict,
mwp flexible, and the examples where strict and an exact-match reading disagree.

The exact-match reading is the authors' rule as far as their outputs show it: a CoT completion's
answer is the text after its last "So the answer is" up to the end of that line, a final period
dropped; an answer-only completion is its answer as written; the answer must equal the target
string. It reproduces every published figure that was checked, so where strict disagrees with it
on an example, one of the two reads that example differently and `--show` prints it.

The outputs are not bundled (they are large); point the script at a folder laid out like the
repository's `code-davinci-002-outputs/` (either of the `.json` / `.jsonl` forms, each row with
"prediction" and "target"; "input" is not needed):

    python benchmarks/bbh_agreement.py /path/to/code-davinci-002-outputs [--show 5] [--check]
    BBH_OUTPUTS=/path/to/code-davinci-002-outputs python benchmarks/bbh_agreement.py

`--check` exits 1 when strict is more than `--tolerance` points (default 1) from a published figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mwp.data.bbh import BBH_TASKS
from mwp.verify.bbh_answers import TASK_ANSWER_TYPES, bbh_matches, extract_bbh_answer

PROMPTS = {"answer-only": "code-davinci-002-direct", "cot": "code-davinci-002-cot"}
STEM = "{task}_few_shot_template_0-255000"
_FINAL = re.compile(r"So the answer is")


def exact_match_reading(prediction: str, prompt: str) -> str:
    """The answer as the authors compare it with the target (see the module doc)."""
    if prompt == "cot":
        finals = list(_FINAL.finditer(prediction))
        if not finals:
            return prediction.strip()
        prediction = prediction[finals[-1].end() :].split("\n", 1)[0]
    answer = prediction.strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def load_outputs(folder: Path, task: str) -> list[dict[str, Any]] | None:
    stem = STEM.format(task=task)
    if (folder / f"{stem}.json").is_file():
        return json.loads((folder / f"{stem}.json").read_text())["outputs"]
    if (folder / f"{stem}.jsonl").is_file():
        lines = (folder / f"{stem}.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return None


def published_accuracy(folder: Path, task: str) -> float | None:
    path = folder / f"{STEM.format(task=task)}_eval_metrics.jsonl"
    return json.loads(path.read_text())["accuracy"] if path.is_file() else None


@dataclass
class TaskScore:
    prompt: str
    task: str
    n: int = 0
    exact: int = 0
    strict: int = 0
    flexible: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)  # strict vs exact match
    flexible_changes: int = 0  # examples where flexible and strict differ in credit


def score(prompt: str, task: str, rows: list[dict[str, Any]]) -> TaskScore:
    answer_type = TASK_ANSWER_TYPES[task]
    result = TaskScore(prompt, task, n=len(rows))
    for index, row in enumerate(rows):
        prediction, target = row["prediction"], row["target"]
        exact = exact_match_reading(prediction, prompt) == target
        strict_pred = extract_bbh_answer(prediction, answer_type, "strict")
        flexible_pred = extract_bbh_answer(prediction, answer_type, "flexible")
        strict = bbh_matches(strict_pred, target, answer_type)
        flexible = bbh_matches(flexible_pred, target, answer_type)
        result.exact += exact
        result.strict += strict
        result.flexible += flexible
        result.flexible_changes += strict != flexible
        if strict != exact:
            result.disagreements.append(
                {
                    "index": index,
                    "target": target,
                    "strict": strict_pred,
                    "exact": exact,
                    "tail": prediction[-160:],
                }
            )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "outputs", nargs="?", default=os.environ.get("BBH_OUTPUTS"), help="code-davinci-002-outputs/"
    )
    parser.add_argument("--show", type=int, default=0, help="print up to N disagreements per task")
    parser.add_argument("--check", action="store_true", help="exit 1 when strict is off a published figure")
    parser.add_argument("--tolerance", type=float, default=1.0, help="points (default 1)")
    args = parser.parse_args(argv)
    if not args.outputs:
        parser.error("give the outputs folder (or set BBH_OUTPUTS)")
    root = Path(args.outputs)
    if not all((root / folder).is_dir() for folder in PROMPTS.values()):
        parser.error(f"{root} has no {' / '.join(PROMPTS.values())} folders")

    header = f"{'prompt':11} {'task':40} {'n':>4} {'published':>9} {'exact':>6} {'strict':>6} {'flex':>6}"
    print(header + f" {'Δstrict':>7} {'strict≠exact':>12} {'flex≠strict':>11}")
    off: list[str] = []
    missing: list[str] = []
    for prompt, folder_name in PROMPTS.items():
        folder = root / folder_name
        for task in BBH_TASKS:
            rows = load_outputs(folder, task)
            published = published_accuracy(folder, task)
            if rows is None:
                missing.append(f"{prompt}/{task}")
                continue
            result = score(prompt, task, rows)
            pct = {name: 100 * getattr(result, name) / result.n for name in ("exact", "strict", "flexible")}
            delta = pct["strict"] - published if published is not None else None
            shown = f"{published:9.1f}" if published is not None else f"{'-':>9}"
            gap = f"{delta:+7.1f}" if delta is not None else f"{'-':>7}"
            print(
                f"{prompt:11} {task:40} {result.n:4d} {shown} {pct['exact']:6.1f} {pct['strict']:6.1f} "
                f"{pct['flexible']:6.1f} {gap} {len(result.disagreements):12d} {result.flexible_changes:11d}"
            )
            if delta is not None and abs(delta) > args.tolerance:
                off.append(f"{prompt}/{task} ({delta:+.1f})")
            for row in result.disagreements[: args.show]:
                print(
                    f"    #{row['index']} target={row['target']!r} strict={row['strict']!r} exact={row['exact']}"
                )
                print(f"       ...{row['tail']!r}")
    if missing:
        print(f"\nno outputs for {len(missing)}: {', '.join(missing)}")
    if off:
        print(f"strict off the published figure by more than {args.tolerance} point(s): {', '.join(off)}")
    return 1 if args.check and off else 0


if __name__ == "__main__":
    sys.exit(main())
