"""The refinement ablation end to end, shrunk: both multiruns, one W&B group per experiment, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHRINK = [
    "debug=default",
    "dataset.limit=40",
    "evaluation.limit=4",
    "refine.max_rounds=2",
    "refine.middle_model.max_steps=2",
    "++refine.middle_model.num_beams=2",
    "++refine.middle_model.num_return_sequences=2",
]


@pytest.mark.slow
def test_the_ablation_runs_every_method_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    env = {
        **os.environ,
        "SEEDS": "1",
        "OUT": str(out),
        "BIN": str(Path(sys.executable).parent),
        "WANDB_MODE": "offline",
        # the middle model's code path with a ~3.5M random-init causal LM instead of SmolLM2-135M
        "MIDDLE_MODEL": "tiny_causal",
    }
    done = subprocess.run(
        ["bash", str(REPO / "experiments/refinement_ablation/run.sh"), *SHRINK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    methods = {
        "svamp": ["none", "middle_model", "enumeration"],
        "math23k": ["none", "middle_model", "teacher_feedback", "enumeration"],
    }
    for dataset, expected in methods.items():
        assert sorted(p.name for p in (out / dataset).iterdir()) == sorted(expected)
        for method in expected:
            (run_dir,) = (out / dataset / method).glob("[0-9]*")  # one multirun per method, one seed
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert config["refine"]["method"] == method
            # one W&B run per job, grouped by experiment, the stage as job type
            assert config["logger"]["wandb"]["group"] == f"refinement_ablation_{dataset}"
            assert config["logger"]["wandb"]["job_type"] == "fltt"
            assert list((run_dir / "wandb").glob("offline-run-*")), f"no offline W&B run in {run_dir}"
            assert (run_dir / "refine" / "stats.json").is_file()
            if method == "middle_model":
                assert config["refine"]["middle_model"]["student"]["pretrained"] == "never"
        report = (out / "report" / dataset / "report.md").read_text()
        for method in expected:
            # the middle model's row also names its MIDDLE_MODEL override
            (row,) = [line for line in report.splitlines() if line.startswith(f"| refine={method} ")]
            assert "| success |" in row, row
        for column in ("failed by distill", "recovered % of failed", "distill precision %", "wall s"):
            assert column in report
        assert (out / "report" / dataset / "accuracy.png").stat().st_size > 1000
        assert (out / "report" / dataset / "refinement.png").stat().st_size > 1000
    assert "SIMULATED teacher" in done.stdout
    assert "teacher feedback: n/a" in done.stdout
