"""Compare runs side by side from their run folders: `mwp-report PATH...` (a run, a multirun, or any folder above).

Everything is read from what each run wrote locally (`config.yaml`, `.hydra/overrides.yaml`,
`summary.json`, `distill/stats.json`, `refine/stats.json`, `eval/results.json`, the teachers'
`usage.json`), so no W&B account or network is needed. A run that failed or never finished is a row
of its own with its status, never silently missing.

The table has one row per run (or, with `--aggregate seed`, one row per setting with mean ± std over
seeds); its first column is the overrides that differ between the runs. Above it, the table says which
teacher wrote the distilled data (a simulated teacher is named as one) and who proposed each
refinement method's recovered equations; a `teacher` column appears when the runs' teachers differ.
`--out DIR` also writes `report.md` and PNG plots there.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunRecord", "build_table", "collect_runs", "main", "write_report"]

RUN_CONFIG = "config.yaml"
SIMULATED = "a SIMULATED teacher: no model, it answers from the dataset's gold equations at set error rates"


def teacher_label(name: str) -> str:
    """A teacher's name as tables show it: a simulation says that it is one."""
    return f"{name} ({SIMULATED})" if name.startswith("simulated") else name


@dataclass
class RunRecord:
    """What one run folder says about its run."""

    path: Path
    status: str
    overrides: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] | None = None
    refine: dict[str, Any] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    teacher_calls: int = 0
    cost_usd: float = 0.0
    # the run's teacher as its config names it, for runs that wrote no distill stats
    configured_teacher: str | None = None

    @property
    def teacher(self) -> str | None:
        """The teacher that wrote the distilled data: distill/stats.json's name (a simulation's says so)."""
        name = (self.distill or {}).get("teacher")
        return str(name) if name else self.configured_teacher

    @property
    def refined_by(self) -> dict[str, str]:
        """Refinement method -> who proposed its recovered equations (refine/stats.json)."""
        methods = (self.refine or {}).get("methods") or {}
        return {
            str(method): str(block["by"])
            for method, block in methods.items()
            if isinstance(block, dict) and block.get("by") and method != "none"
        }

    @property
    def steps(self) -> int | None:
        train = self.summary.get("train")
        return train.get("steps") if isinstance(train, dict) else None

    @property
    def wall_time_s(self) -> float | None:
        value = self.summary.get("wall_time_s")
        return float(value) if isinstance(value, int | float) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str] = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


# The run folder's name for each stage's output (a link into the stage cache).
_STAGE_FOLDERS = {"distill": "distill", "refine": "refine", "student": "train", "eval": "evaluate"}


def _reused_stages(summary: dict[str, Any]) -> set[str]:
    stages = summary.get("stages") if isinstance(summary.get("stages"), dict) else {}
    return {
        name for name, info in stages.items() if isinstance(info, dict) and info.get("status") == "reused"
    }


def _usage(run_dir: Path, reused: set[str] = frozenset()) -> tuple[int, float]:
    """Teacher calls and cost this run paid for: a stage it reused from the cache cost it nothing."""
    calls, cost = 0, 0.0
    for path in sorted(run_dir.glob("*/usage*.json")):
        if _STAGE_FOLDERS.get(path.parent.name) in reused:
            continue
        usage = _read_json(path)
        if isinstance(usage, dict):
            calls += int(usage.get("calls") or 0)
            cost += float(usage.get("cost_usd") or 0.0)
    return calls, cost


def _configured_teacher(run_dir: Path) -> str | None:
    try:
        config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    teacher = config.get("teacher") if isinstance(config, dict) else None
    name = teacher.get("name") if isinstance(teacher, dict) else None
    return str(name) if name else None


def read_run(run_dir: Path) -> RunRecord:
    path = run_dir / "summary.json"
    summary = _read_json(path)
    unreadable = path.exists() and not isinstance(summary, dict)
    if unreadable:
        # A run that wrote a summary finished one way or another: say it cannot be read, not "incomplete".
        print(
            f"mwp-report: warning: {path} is not a JSON object; its run is shown as unreadable",
            file=sys.stderr,
        )
    if not isinstance(summary, dict):
        summary = {}
    status = "unreadable" if unreadable else str(summary.get("status") or "incomplete")
    if status == "running":
        status = "incomplete"  # a live run and a killed one look the same from outside
    results = _read_json(run_dir / "eval" / "results.json")
    distill = _read_json(run_dir / "distill" / "stats.json")
    refine = _read_json(run_dir / "refine" / "stats.json")
    calls, cost = _usage(run_dir, _reused_stages(summary))
    return RunRecord(
        configured_teacher=_configured_teacher(run_dir),
        path=run_dir,
        status=status,
        overrides=_overrides(run_dir),
        summary=summary,
        distill=distill if isinstance(distill, dict) else None,
        refine=refine if isinstance(refine, dict) else None,
        results=results if isinstance(results, list) else [],
        teacher_calls=calls,
        cost_usd=cost,
    )


def collect_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Every run folder (one holding an mwp `config.yaml`) at or below the given paths, in path order."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        candidates = [path / RUN_CONFIG] if (path / RUN_CONFIG).is_file() else sorted(path.rglob(RUN_CONFIG))
        for config in candidates:
            if config.parent.name == ".hydra":
                continue
            found[config.parent.resolve()] = None
    return [read_run(run_dir) for run_dir in found]


# ------------------------------------------------------------------------------------------ table


def _differing(records: Sequence[RunRecord], drop: Sequence[str] = ()) -> list[str]:
    keys = sorted({key for r in records for key in r.overrides} - set(drop))
    if len(records) < 2:
        return keys
    return [k for k in keys if len({r.overrides.get(k, "") for r in records}) > 1]


def _result_key(result: dict[str, Any], multi_format: bool) -> str:
    key = f"{result.get('dataset')}/{result.get('split')}"
    model = str(result.get("model") or "student")
    if model != "student" and not model.startswith("baseline"):
        key = f"{model}:{key}"
    if multi_format and result.get("format"):
        key += f" [{result['format']}]"
    return key


def _accuracy_figures(result: dict[str, Any], multi_format: bool) -> dict[str, float]:
    """An equation-format result has one accuracy (the template's value); CoT has strict and flexible,
    and Fu et al.'s metric (`last_number`) where the run scored it. The most-frequent-template
    baseline gets its own column next to the student's."""
    key = _result_key(result, multi_format)
    baseline = str(result.get("model") or "").startswith("baseline")
    if result.get("extraction") == "equation":
        value = _number(result.get("strict_acc"))
        return {} if value is None else {f"{key} {'baseline' if baseline else 'acc'}": 100 * value}
    out = {}
    for name in ("strict_acc", "flexible_acc", "last_number_acc"):
        value = _number(result.get(name))
        if value is not None:
            label = name.removesuffix("_acc")
            out[f"{key} {f'baseline {label}' if baseline else label}"] = 100 * value
    return out


def _metrics(record: RunRecord, multi_format: bool) -> dict[str, float]:
    """Flat numeric figures of one run: data yield, refinement, accuracy per evaluation set, calls, time."""
    out: dict[str, float] = {}
    if record.distill and isinstance(record.distill.get("problem_yield"), int | float):
        out["distill yield %"] = 100 * float(record.distill["problem_yield"])
    out.update(_chain_figures(record.distill))
    out.update(_refine_figures(record.refine))
    for result in record.results:
        out.update(_accuracy_figures(result, multi_format))
    if record.steps is not None:
        out["steps"] = float(record.steps)
    out["teacher calls"] = float(record.teacher_calls)
    if "stages" in record.summary:
        out["stages reused"] = float(len(_reused_stages(record.summary)))
    if record.cost_usd:
        out["cost $"] = record.cost_usd
    if record.wall_time_s is not None:
        out["wall s"] = record.wall_time_s
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _chain_figures(distill: dict[str, Any] | None) -> dict[str, float]:
    """Yield of each step of the equation chain (`distill/stats.json` "steps"), in percent."""
    out: dict[str, float] = {}
    steps = (distill or {}).get("steps")
    if not isinstance(steps, dict):
        return out
    requests = 0.0
    for name, step in steps.items():
        if not isinstance(step, dict):
            continue
        requests += _number(step.get("requests")) or 0.0
        if step.get("checked") and _number(step.get("yield")) is not None:
            out[f"{name} yield %"] = 100 * float(step["yield"])
    out["teacher requests"] = requests
    return out


def _refine_figures(refine: dict[str, Any] | None) -> dict[str, float]:
    """Failed problems, recovered ones (per round too) and semantic precision from `refine/stats.json`."""
    out: dict[str, float] = {}
    if not refine:
        return out
    distill = refine.get("distill") or {}
    if _number(distill.get("problems_failed")) is not None:
        out["failed by distill"] = float(distill["problems_failed"])
    precision = _number((distill.get("precision") or {}).get("precision"))
    if precision is not None:
        out["distill precision %"] = 100 * precision
    for method in (refine.get("methods") or {}).values():
        if not isinstance(method, dict):
            continue
        if _number(method.get("recovered")) is not None:
            out["recovered"] = float(method["recovered"])
        if _number(method.get("recovered_share")) is not None:
            out["recovered % of failed"] = 100 * float(method["recovered_share"])
        precision = _number((method.get("precision") or {}).get("precision"))
        if precision is not None:
            out["refine precision %"] = 100 * precision
        for round_stats in method.get("rounds") or []:
            if isinstance(round_stats, dict) and _number(round_stats.get("recovered")) is not None:
                out[f"round {round_stats.get('round')} recovered"] = float(round_stats["recovered"])
        calls = sum(
            _number(r.get("teacher_calls")) or 0.0 for r in method.get("rounds") or [] if isinstance(r, dict)
        )
        if calls:
            out["refine teacher requests"] = calls
        if _number(method.get("wall_s")) is not None:
            out["refine s"] = float(method["wall_s"])
    return out


# Column order: the data (yields, refinement), then accuracy, then what the run cost.
_FIRST = (
    "distill yield %",
    "failed by distill",
    "distill precision %",
    "recovered",
    "recovered % of failed",
    "refine precision %",
)
_LAST = (
    "refine s",
    "steps",
    "teacher requests",
    "refine teacher requests",
    "teacher calls",
    "cost $",
    "stages reused",
    "wall s",
)


def _column_rank(name: str) -> tuple[int, int]:
    if name in _FIRST:
        return (1, _FIRST.index(name))
    if name.endswith(" yield %"):
        return (0, 0)
    if name.startswith("round "):
        return (2, int(name.split()[1]) if name.split()[1].isdigit() else 0)
    if name in _LAST:
        return (4, _LAST.index(name))
    return (3, 0)


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    text = f"{mean:.1f}" if abs(mean) < 1e5 else f"{mean:.3g}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.1f}"
    return text


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    # per row, per metric column: the raw values (several with --aggregate)
    values: list[dict[str, list[float]]]
    labels: list[str]
    # who produced the data: the teacher line(s), then who proposed each refinement's equations
    caption: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [*self.caption, ""] if self.caption else []
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def _caption(records: Sequence[RunRecord]) -> list[str]:
    teachers = list(dict.fromkeys(r.teacher for r in records if r.teacher))
    if not teachers:
        lines = ["teacher: unknown (no run wrote distill/stats.json)"]
    elif len(teachers) == 1:
        lines = [f"teacher: {teacher_label(teachers[0])}"]
    else:
        lines = ["teachers (the teacher column): " + "; ".join(teacher_label(t) for t in teachers)]
    proposers: dict[str, list[str]] = {}
    for record in records:
        for method, by in record.refined_by.items():
            proposers.setdefault(method, [])
            if by not in proposers[method]:
                proposers[method].append(by)
    for method, names in proposers.items():
        lines.append(f"refine={method}: equations proposed by " + "; ".join(teacher_label(n) for n in names))
    return lines


def build_table(records: Sequence[RunRecord], *, aggregate: Sequence[str] = ()) -> Table:
    """One row per run, or per setting when `aggregate` names overrides to average over (e.g. seed)."""
    multi_format = len({r.get("format") for rec in records for r in rec.results} - {None}) > 1
    differing = _differing(records, drop=aggregate)
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        key = tuple(f"{k}={record.overrides.get(k, '')}" for k in differing)
        groups.setdefault(key if aggregate else (*key, str(record.path)), []).append(record)
    metric_names: list[str] = []
    per_group: list[dict[str, list[float]]] = []
    for members in groups.values():
        merged: dict[str, list[float]] = {}
        for record in members:
            if record.status != "success":
                continue
            for name, value in _metrics(record, multi_format).items():
                merged.setdefault(name, []).append(value)
                if name not in metric_names:
                    metric_names.append(name)
        per_group.append(merged)
    metric_names.sort(key=_column_rank)
    several_teachers = len({r.teacher for r in records if r.teacher}) > 1
    columns = [
        "run",
        "status",
        *(["runs"] if aggregate else []),
        *(["teacher"] if several_teachers else []),
        *metric_names,
    ]
    rows, labels = [], []
    for (key, members), merged in zip(groups.items(), per_group, strict=True):
        label = " ".join(part for part in key[: len(differing)] if not part.endswith("=")) or (
            members[0].path.name
        )
        statuses = sorted({m.status for m in members})
        row = [label, "/".join(statuses)]
        if aggregate:
            row.append(str(len(members)))
        if several_teachers:
            row.append(" / ".join(dict.fromkeys(m.teacher or "?" for m in members)))
        row += [_fmt(merged.get(name, [])) for name in metric_names]
        rows.append(row)
        labels.append(label)
    return Table(columns=columns, rows=rows, values=per_group, labels=labels, caption=_caption(records))


# ------------------------------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, table: Table, column: str, offset: float, width: float, label: str) -> None:
    """One bar per row of `table` at x = row + offset: the mean of `column`, the std over its runs."""
    means = [statistics.fmean(v[column]) if v.get(column) else math.nan for v in table.values]
    errors = [statistics.stdev(v[column]) if len(v.get(column, [])) > 1 else 0.0 for v in table.values]
    positions = [i + offset for i in range(len(table.labels))]
    ax.bar(positions, means, width, yerr=errors, capsize=3, label=label)


def _teacher_note(table: Table) -> str | None:
    return table.caption[0] if table.caption else None


def _finish_axis(ax: Any, table: Table, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(len(table.labels)))
    ax.set_xticklabels(table.labels, rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=7)


def _save(fig: Any, path: Path, note: str | None = None) -> Path:
    if note:
        fig.suptitle(note, fontsize=7)  # which teacher's data the figure is about
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _plot_accuracy(table: Table, out_dir: Path) -> list[Path]:
    kinds = [
        k
        for k in ("acc", "strict", "flexible", "last_number")
        if any(c.endswith(f" {k}") for c in table.columns)
    ]
    accuracy_columns = [c for c in table.columns if c.endswith(tuple(f" {k}" for k in kinds))]
    sets = list(dict.fromkeys(c.rsplit(" ", 1)[0] for c in accuracy_columns))
    if not sets:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sets), figsize=(max(4.0, 1.2 * len(table.labels)) * len(sets), 4.2))
    axes = [axes] if len(sets) == 1 else list(axes)
    width = 0.76 / max(2, len(kinds))
    for ax, name in zip(axes, sets, strict=True):
        for j, kind in enumerate(kinds):
            _bars(ax, table, f"{name} {kind}", width * (j - (len(kinds) - 1) / 2), width, kind)
        baseline = f"{name} baseline" if "acc" in kinds else f"{name} baseline strict"
        if any(v.get(baseline) for v in table.values):
            level = statistics.fmean([x for v in table.values for x in v.get(baseline, [])])
            ax.axhline(level, color="grey", linestyle="--", label="baseline")
        _finish_axis(ax, table, name, "accuracy (%)")
    return [_save(fig, out_dir / "accuracy.png", _teacher_note(table))]


def _plot_refinement(table: Table, out_dir: Path) -> list[Path]:
    """The refinement ablation: share of distillation's failures recovered, and how many keep their meaning."""
    columns = [
        c
        for c in ("recovered % of failed", "refine precision %", "distill precision %")
        if c in table.columns
    ]
    if "recovered % of failed" not in columns:
        return []
    fig, ax = _pyplot().subplots(figsize=(max(5.0, 1.4 * len(table.labels)), 4.2))
    width = 0.8 / len(columns)
    for j, column in enumerate(columns):
        _bars(ax, table, column, width * (j + 0.5) - 0.4, width, column.removesuffix(" %"))
    ax.set_ylim(0, 105)
    _finish_axis(ax, table, "refinement: recovery and semantic precision", "%")
    return [_save(fig, out_dir / "refinement.png", _teacher_note(table))]


def _headline_accuracy(record: RunRecord) -> dict[str, float]:
    """Each evaluation set's headline accuracy of one run (flexible for CoT, the value for equations)."""
    multi_format = len({r.get("format") for r in record.results} - {None}) > 1
    out: dict[str, float] = {}
    for result in record.results:
        for column, value in _accuracy_figures(result, multi_format).items():
            name, _, kind = column.rpartition(" ")
            if kind in ("acc", "flexible") and "baseline" not in name:
                out[name] = value
    return out


def samples_per_problem(record: RunRecord) -> float | None:
    """Teacher samples per training problem, as distillation saw them (samples seen / problems seen)."""
    distill = record.distill or {}
    seen, problems = _number(distill.get("samples_seen")), _number(distill.get("problems_seen"))
    return seen / problems if seen is not None and problems else None


def _accuracy_by(records: Sequence[RunRecord], value_of: Any) -> dict[Any, dict[str, list[float]]]:
    """Headline accuracies of the successful runs, grouped by `value_of(record)` (None: left out)."""
    grouped: dict[Any, dict[str, list[float]]] = {}
    for record in records:
        value = value_of(record)
        if record.status != "success" or value is None:
            continue
        for name, accuracy in _headline_accuracy(record).items():
            grouped.setdefault(value, {}).setdefault(name, []).append(accuracy)
    return grouped


def _plot_samples(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Accuracy against teacher samples per problem, when the runs distilled with different numbers."""
    grouped = _accuracy_by(
        records, lambda r: round(v, 2) if (v := samples_per_problem(r)) is not None else None
    )
    if len(grouped) < 2:
        return []
    xs = sorted(grouped)
    fig, ax = _pyplot().subplots(figsize=(5.5, 4.2))
    for name in dict.fromkeys(n for x in xs for n in grouped[x]):
        points = [(x, grouped[x][name]) for x in xs if grouped[x].get(name)]
        means = [statistics.fmean(v) for _, v in points]
        errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
        ax.errorbar([x for x, _ in points], means, yerr=errors, marker="o", capsize=3, label=name)
    ax.set_xlabel("teacher samples per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs teacher samples per problem")
    ax.legend(fontsize=7)
    return [_save(fig, out_dir / "samples.png")]


def _plot_formats(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Accuracy per data-format setting (`data.formats`), when the runs trained on different formats."""
    grouped = _accuracy_by(records, lambda r: r.overrides.get("data.formats"))
    if len(grouped) < 2:
        return []
    settings = list(grouped)
    sets = list(dict.fromkeys(n for f in settings for n in grouped[f]))
    fig, ax = _pyplot().subplots(figsize=(max(5.0, 1.3 * len(settings) * max(1, len(sets)) / 2), 4.2))
    width = 0.8 / max(1, len(sets))
    for j, name in enumerate(sets):
        values = [grouped[f].get(name, []) for f in settings]
        means = [statistics.fmean(v) if v else math.nan for v in values]
        errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        positions = [i + width * (j + 0.5) - 0.4 for i in range(len(settings))]
        ax.bar(positions, means, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("data formats (data.formats)")
    ax.legend(fontsize=7)
    return [_save(fig, out_dir / "formats.png")]


def write_report(records: Sequence[RunRecord], out_dir: Path, *, aggregate: Sequence[str] = ()) -> Table:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_table(records, aggregate=aggregate)
    plots = (
        _plot_accuracy(table, out_dir)
        + _plot_samples(records, out_dir)
        + _plot_formats(records, out_dir)
        + _plot_refinement(table, out_dir)
    )
    text = ["# mwp report", "", f"{len(records)} runs", "", table.markdown(), ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    (out_dir / "report.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mwp-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run folders, multirun folders, or folders above them")
    parser.add_argument("--out", type=Path, help="write report.md and PNG plots into this folder")
    parser.add_argument(
        "--aggregate", action="append", default=[], help="average over this override (e.g. seed); repeatable"
    )
    args = parser.parse_args(argv)
    try:
        records = collect_runs(args.paths)
    except FileNotFoundError as err:
        print(f"mwp-report: error: {err}", file=sys.stderr)
        return 2
    if not records:
        print(f"mwp-report: error: no run folders under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    if args.out:
        table = write_report(records, args.out, aggregate=args.aggregate)
    else:
        table = build_table(records, aggregate=args.aggregate)
    print(table.markdown())
    if args.out:
        print(f"\nreport: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
