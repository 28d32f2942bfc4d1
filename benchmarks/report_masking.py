"""Coverage of the equation format on real data: gold templates per dataset, Weak12K num_list agreement.

    python benchmarks/report_masking.py [--data-dir ../shared/data]

For every dataset split: problems, problems with a gold equation, and the share whose gold equation
maps onto the masked numbers as a template that gives the answer (`gold_template`). For Weak12K,
which has no equations, how often masking's numbers equal the dataset's own num_list by value.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.paths import default_data_dir
from mwp.verify.numbers import parse_number

SPLITS = (
    ("svamp", "train"),
    ("multiarith", "test"),
    ("asdiv_a", "test"),
    ("gsm8k", "train"),
    ("math23k", "train"),
    ("weak12k", "valid"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    print(f"{'dataset':<18}{'problems':>9}{'equations':>10}{'gold template':>15}{'share':>8}")
    for name, split in SPLITS:
        problems = load_problems(name, split, data_dir)
        with_equation = [p for p in problems if p.equation]
        mapped = sum(gold_template(p) is not None for p in with_equation)
        share = f"{100 * mapped / len(with_equation):.1f}%" if with_equation else "-"
        print(f"{name + '/' + split:<18}{len(problems):>9}{len(with_equation):>10}{mapped:>15}{share:>8}")
        if name == "weak12k":
            report_num_list(problems)


def report_num_list(problems: list) -> None:
    agree = 0
    kinds: Counter[str] = Counter()
    for problem in problems:
        ours = [parse_number(n) for n in problem.numbers]
        theirs = [parse_number(n) for n in problem.meta["num_list"]]
        if ours == theirs:
            agree += 1
        elif len(ours) != len(theirs):
            kinds["different count"] += 1
        else:
            kinds["different value"] += 1
    print(
        f"weak12k numbers equal to num_list by value: {agree}/{len(problems)} ({100 * agree / len(problems):.1f}%)"
    )
    for kind, count in kinds.most_common():
        print(f"  {kind}: {count}")


if __name__ == "__main__":
    main()
