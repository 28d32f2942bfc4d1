"""Every entry point answers a user's mistake with one line naming the key or file:line, exit status 2.

Each case runs the real command in a subprocess, as a user would, and reads what it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT


def _command(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        timeout=180,
    )


def _mwp(
    tmp_path: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _command(["-m", "mwp.cli", *overrides, f"paths.log_dir={tmp_path / 'outputs'}"], tmp_path, env)


def _one_line(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The single line a failed command printed, checked for its shape."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("override", "names", "suggestion"),
    [
        ("optim.lrr=1", "optim.lrr", "did you mean optim.lr?"),
        ("dataset=svmp", "dataset=svmp", "did you mean svamp?"),
        ("loss=ce_kll", "loss=ce_kll", "did you mean ce_kl?"),
        ("experiment=nonexistent", "experiment=nonexistent", "demo_equation"),
        ("trainer.max_stepz=3", "trainer.max_stepz", "did you mean trainer.max_steps?"),
    ],
)
def test_a_typo_in_an_override_is_one_line_with_the_closest_names(
    tmp_path: Path, override: str, names: str, suggestion: str
) -> None:
    line = _one_line(_mwp(tmp_path, override), "mwp")
    assert names in line and suggestion in line
    # nothing was claimed: no run folder, not even an empty `runs/`
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


def test_an_interpolation_to_a_missing_key_is_one_line(tmp_path: Path) -> None:
    line = _one_line(_mwp(tmp_path, "task_name=${nope.key}"), "mwp")
    assert "task_name" in line and "nope.key" in line


def test_every_config_error_is_reported_at_once(tmp_path: Path) -> None:
    """The README's example: a bad value and a teacher that does not cover the dataset, both at once."""
    proc = _mwp(tmp_path, "optim.lr=-1", "dataset=multiarith")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "mwp: error: optim.lr: Input should be greater than 0 (got -1)",
        "mwp: error: teacher.dataset: the recorded teacher 'palm-540b' covers 'svamp', not "
        "dataset.name='multiarith'; pick a live teacher (teacher=smollm2, openai, vllm)",
    ]


def test_an_unset_api_key_is_one_line_before_any_run_folder_or_wandb_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mwp.cli",
            "stage=distill",
            "teacher=openai",
            "dataset=multiarith",
            "logger=default",
            f"paths.log_dir={tmp_path / 'outputs'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline"},
        timeout=180,
    )
    line = _one_line(proc, "mwp")
    assert "teacher.api_key_env='OPENAI_API_KEY'" in line
    assert not list(tmp_path.rglob("wandb")) and not list(tmp_path.rglob("config.yaml"))


def test_batch_export_answers_bad_values_and_unknown_teachers_in_one_line(tmp_path: Path) -> None:
    export = ["-m", "mwp.teachers.batch", "export", "--dataset", "multiarith", "--out", "x.jsonl"]
    line = _one_line(
        _command([*export, "--teacher", "vllm", "teacher.model=m", "teacher.n=abc"], tmp_path), "export"
    )
    assert "teacher.n" in line and "'abc'" in line
    line = _one_line(_command([*export, "--teacher", "vlm"], tmp_path), "export")
    assert "teacher=vlm" in line and "did you mean vllm?" in line
    assert not (tmp_path / "x.jsonl").exists()


def _distilled_line(problem_id: str) -> str:
    problem = {
        "id": problem_id,
        "question": "Tom has 3 apples and buys 4. How many?",
        "answer": "7",
        "answer_text": "7",
    }
    return json.dumps({"problem": problem, "rationale": "3 + 4 = 7. The answer is 7.", "teacher": "t"})


def test_merge_names_the_bad_row_the_missing_shard_and_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "distilled.jsonl", tmp_path / "b" / "distilled.jsonl"
    for path in (a, b):
        path.parent.mkdir()
    a.write_text(
        _distilled_line("p1") + "\n" + '{"problem": {"id": "p2"' + "\n" + _distilled_line("p3") + "\n"
    )
    b.write_text(_distilled_line("p4") + "\n")
    merge = ["-m", "mwp.data.shards", "merge"]
    line = _one_line(_command([*merge, "out.jsonl", str(a), str(b)], tmp_path), "merge")
    assert f"{a}:2" in line
    line = _one_line(
        _command([*merge, "out.jsonl", str(b), str(tmp_path / "c" / "distilled.jsonl")], tmp_path), "merge"
    )
    assert str(tmp_path / "c" / "distilled.jsonl") in line
    before = b.read_bytes()
    line = _one_line(_command([*merge, str(b), str(b), str(b)], tmp_path), "merge")
    assert "is one of the inputs" in line and b.read_bytes() == before
    assert not (tmp_path / "out.jsonl").exists()


def test_mwp_config_lists_groups_without_an_empty_line_and_answers_typos(tmp_path: Path) -> None:
    groups = _command(["-m", "mwp.cli.config", "--groups"], tmp_path)
    assert groups.returncode == 0, groups.stderr
    assert all(line.split(":", 1)[1].strip() for line in groups.stdout.splitlines()), groups.stdout
    assert "hydra/launcher: parallel, slurm" in groups.stdout.splitlines()
    line = _one_line(_command(["-m", "mwp.cli.config", "--check", "dataset=svmp"], tmp_path), "mwp-config")
    assert "did you mean svamp?" in line


def test_mwp_cache_says_when_no_entry_matches(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "distill").mkdir(parents=True)
    proc = _command(["-m", "mwp.cli.cache", "--dir", str(cache), "show", "zzzz"], tmp_path)
    line = _one_line(proc, "mwp-cache")
    assert "no entry" in line and "zzzz" in line and "give more" not in line


def test_mwp_report_prints_its_prefix_once(tmp_path: Path) -> None:
    line = _one_line(_command(["-m", "mwp.report", str(tmp_path / "nowhere")], tmp_path), "mwp-report")
    assert line.count("mwp-report") == 1 and "nowhere" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"qid,text,ask,result,formula,part\np1,Zo\xeb has 5,How many?,5,5,train\n", ":2: not UTF-8 text"),
        (b"", "has no problems in split 'train'"),
    ],
)
def test_a_bad_dataset_file_is_one_line_naming_it_before_any_run_folder(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    data = tmp_path / "mine.csv"
    data.write_bytes(content)
    proc = _mwp(
        tmp_path,
        "dataset=example_custom",
        f"dataset.source.files.all={data}",
        "stage=distill",
        "teacher=simulated",
        "teacher.dataset=example_custom",
        "prompt=fltt_en",
        "logger=default",
        env={"WANDB_MODE": "offline"},
    )
    line = _one_line(proc, "mwp")
    assert str(data) in line and expected in line
    assert "simulated teacher" not in line  # the file is to blame, not the teacher
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


def test_a_config_error_leaves_no_empty_folders(tmp_path: Path) -> None:
    proc = _mwp(tmp_path, "optim.lr=-1")
    assert proc.returncode == 2
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))
