"""The before/after table and plot of experiments/specialize_smollm2/run.sh.

Reads `<out>/before/eval` (the model as built, `evaluation.models=[initial]`) and `<out>/seed*/eval` (the
trained students): math accuracy per set, strict and flexible, and the BIG-Bench Hard subset, as mean and
sample standard deviation over the seeds. Writes `table.md`, `results.json` and `before_after.png`.

    python experiments/specialize_smollm2/report.py OUT [--out OUT/report]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _math(eval_dir: Path, model: str) -> dict[str, dict[str, Any]]:
    rows = [r for r in _load(eval_dir / "results.json") if r["model"] == model]
    return {r["dataset"]: r for r in rows}


def _bbh(eval_dir: Path, label: str) -> dict[str, Any] | None:
    path = eval_dir / ("bbh_results.json" if label == "student" else f"bbh_results_{label}.json")
    return _load(path) if path.is_file() else None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{100 * mean:.1f} ± {100 * sd:.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


def summarise(out: Path) -> dict[str, Any]:
    before_dir = out / "before" / "eval"
    seeds = sorted(p for p in out.glob("seed*") if (p / "eval" / "results.json").is_file())
    if not (before_dir / "results.json").is_file() or not seeds:
        raise SystemExit(f"report: {out} needs before/eval/results.json and seed*/eval/results.json")
    before = _math(before_dir, "initial")
    after = [_math(seed / "eval", "student") for seed in seeds]
    rows = []
    for dataset, row in before.items():
        rows.append(
            {
                "dataset": dataset,
                "split": row["split"],
                "role": row["role"],
                "size": row["size"],
                "before_strict": row["strict_acc"],
                "before_flexible": row["flexible_acc"],
                "after_strict": [a[dataset]["strict_acc"] for a in after],
                "after_flexible": [a[dataset]["flexible_acc"] for a in after],
                "after_sizes": [a[dataset]["size"] for a in after],
            }
        )
    bbh_before = _bbh(before_dir, "initial")
    bbh_after = [b for b in (_bbh(seed / "eval", "student") for seed in seeds) if b is not None]
    bbh = None
    if bbh_before is not None and bbh_after:
        bbh = {
            "tasks": [t["task"] for t in bbh_before["tasks"]],
            "size": sum(t["size"] for t in bbh_before["tasks"]),
            "before_strict": bbh_before["macro_strict_acc"],
            "before_flexible": bbh_before["macro_flexible_acc"],
            "after_strict": [b["macro_strict_acc"] for b in bbh_after],
            "after_flexible": [b["macro_flexible_acc"] for b in bbh_after],
            "per_task": {
                t["task"]: {
                    "before": t["flexible_acc"],
                    "after": [
                        next(x["flexible_acc"] for x in b["tasks"] if x["task"] == t["task"])
                        for b in bbh_after
                    ],
                }
                for t in bbh_before["tasks"]
            },
        }
    summaries = [_load(seed / "summary.json") for seed in seeds]
    return {
        "seeds": [s.name for s in seeds],
        "steps": [s.get("train", {}).get("steps") for s in summaries],
        "math": rows,
        "bbh": bbh,
    }


def table(summary: dict[str, Any]) -> str:
    n = len(summary["seeds"])
    lines = [
        f"SmolLM2-135M-Instruct before and after LoRA specialisation on PaLM-540B SVAMP chains of thought "
        f"(recorded teacher); greedy, zero-shot CoT with the chat template; after = mean ± sd over {n} seeds "
        f"({', '.join(summary['seeds'])}), {summary['steps'][0]} steps each.",
        "",
        "| set | role | problems | before strict | after strict | before flexible | after flexible |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["math"]:
        lines.append(
            f"| {row['dataset']}/{row['split']} | {row['role']} | {row['size']} | "
            f"{100 * row['before_strict']:.1f} | {_cell(row['after_strict'])} | "
            f"{100 * row['before_flexible']:.1f} | {_cell(row['after_flexible'])} |"
        )
    bbh = summary["bbh"]
    if bbh is not None:
        lines.append(
            f"| BBH ({', '.join(bbh['tasks'])}; 3-shot CoT, macro) | generality | {bbh['size']} | "
            f"{100 * bbh['before_strict']:.1f} | {_cell(bbh['after_strict'])} | "
            f"{100 * bbh['before_flexible']:.1f} | {_cell(bbh['after_flexible'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['dataset']}\n({r['role'].split('-')[0]})" for r in summary["math"]]
    before = [100 * r["before_flexible"] for r in summary["math"]]
    after = [_mean_sd(r["after_flexible"]) for r in summary["math"]]
    if summary["bbh"] is not None:
        labels.append("BBH subset\n(generality)")
        before.append(100 * summary["bbh"]["before_flexible"])
        after.append(_mean_sd(summary["bbh"]["after_flexible"]))
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before (SmolLM2-135M-Instruct)")
    ax.bar(
        [x + 0.2 for x in xs],
        [100 * m for m, _ in after],
        yerr=[100 * s for _, s in after],
        width=0.4,
        capsize=3,
        label=f"after LoRA on PaLM CoT (mean ± sd, {len(summary['seeds'])} seeds)",
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("flexible accuracy (%)")
    ax.set_title("Specialising SmolLM2-135M on SVAMP chains of thought")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the run.sh output folder")
    parser.add_argument("--out", dest="report", type=Path, default=None, help="where the report goes")
    args = parser.parse_args()
    report = args.report or args.out / "report"
    report.mkdir(parents=True, exist_ok=True)
    summary = summarise(args.out)
    text = table(summary)
    (report / "table.md").write_text(text, encoding="utf-8")
    (report / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(summary, report / "before_after.png")
    print(text)
    print(f"-> {report}")


if __name__ == "__main__":
    main()
