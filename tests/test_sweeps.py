"""Sweeps and launchers: the objective a run returns, Optuna trials, parallel jobs, SLURM ranks."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mwp.config import ConfigError
from mwp.objective import objective
from mwp.runtime import adopt_slurm_rank
from mwp.stages import load_config
from tests.helpers import compose_config


def _row(dataset: str, role: str, fmt: str, strict: float, flexible: float, model: str = "student") -> dict:
    return {
        "model": model,
        "dataset": dataset,
        "split": "test",
        "role": role,
        "format": fmt,
        "strict_acc": strict,
        "flexible_acc": flexible,
    }


SUMMARY = {
    "status": "success",
    "train": {"steps": 10, "best_val_acc": 0.25},
    "evaluate": [
        _row("gsm8k", "in-distribution", "zero_shot_cot", 0.30, 0.40),
        _row("gsm8k", "in-distribution", "zero_shot_answer", 0.10, 0.20),
        _row("multiarith", "out-of-distribution", "zero_shot_cot", 0.50, 0.60),
        _row("svamp", "out-of-distribution", "zero_shot_cot", 0.20, 0.30),
        _row("svamp", "out-of-distribution", "zero_shot_cot", 0.90, 0.90, model="teacher"),
    ],
}


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ("val/acc", 0.25),
        ("eval/gsm8k/strict_acc", 0.30),  # the set's first format
        ("eval/gsm8k/zero_shot_answer/flexible_acc", 0.20),
        ("eval/svamp/strict_acc", 0.20),  # the student's row, not the teacher's
        ("eval/ood/strict_acc", 0.35),  # multiarith and svamp, not gsm8k
    ],
)
def test_objective_reads_the_configured_metric_from_the_summary(metric: str, value: float) -> None:
    assert objective(SUMMARY, metric) == pytest.approx(value)


def test_objective_is_nan_where_the_run_has_no_such_metric() -> None:
    assert math.isnan(objective({"train": {"best_val_acc": None}}, "val/acc"))
    assert math.isnan(objective(SUMMARY, "eval/asdiv_a/strict_acc"))
    assert math.isnan(objective({"status": "success"}, "eval/ood/strict_acc"))


def test_a_misspelt_metric_fails_the_config_check() -> None:
    load_config(compose_config(["optimized_metric=eval/ood/strict_acc"]))
    with pytest.raises(ConfigError, match=r"^optimized_metric: .*eval/<set>/strict_acc"):
        load_config(compose_config(["optimized_metric=eval/gsm8k/accuracy"]))


def test_slurm_tasks_after_the_first_are_worker_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    from mwp.runtime import is_worker_rank

    # a private copy: adopt_slurm_rank writes os.environ itself, which monkeypatch would not undo
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if "RANK" not in k})
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    adopt_slurm_rank()
    assert os.environ["RANK"] == "3" and is_worker_rank()
    # A single-task allocation (an interactive shell, one GPU) is left alone.
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    adopt_slurm_rank()
    assert "RANK" not in os.environ and not is_worker_rank()


def test_slurm_trainers_take_the_task_layout_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    monkeypatch.setenv("SLURM_NNODES", "2")
    for trainer in ("slurm_ddp", "slurm_fsdp"):
        cfg = load_config(compose_config([f"trainer={trainer}"])).trainer
        assert (cfg.devices, cfg.num_nodes) == (8, 2)
        (plugin,) = cfg.plugins
        assert plugin == {
            "_target_": "lightning.pytorch.plugins.environments.SLURMEnvironment",
            "auto_requeue": False,
        }


def has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # hydra_plugins itself is missing
        return False


def _mwp(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", "-m", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _wandb_run_record(path: Path) -> object:
    """The run record (project, group, job type) of an offline W&B run file: records in its first block."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos = 7  # the file header
    while pos + 7 <= min(len(data), 32768):
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind != 1:  # not a whole record
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data[pos : pos + length])
        pos += length
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {path}")


@pytest.mark.slow
@pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_joblib_launcher"), reason="needs hydra-joblib-launcher"
)
def test_parallel_launcher_runs_two_jobs_that_one_report_compares(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    _mwp(
        [
            "hydra/launcher=parallel",
            "experiment=demo",
            "debug=default",
            "seed=1,2",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=repo,
    )
    (sweep,) = (tmp_path / "demo" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    runs = []
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "success"
        (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
        runs.append(_wandb_run_record(run_file))
    # two W&B runs, one group: the experiment's task name
    assert len({r.run_id for r in runs}) == 2
    assert {(r.project, r.run_group, r.job_type) for r in runs} == {("mwp", "demo", "pipeline")}

    from mwp.report import main as report_main

    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| seed=")]
    assert [line.split(" | ")[0] for line in table] == ["| seed=1", "| seed=2"]
    assert all(" | success | " in line for line in table)
    import matplotlib.image

    for png in out.glob("*.png"):
        assert matplotlib.image.imread(png).shape[0] > 100
    assert list(out.glob("*.png"))


@pytest.mark.slow
@pytest.mark.skipif(not has_module("hydra_plugins.hydra_optuna_sweeper"), reason="needs the sweep extra")
def test_optuna_trials_get_each_runs_objective(tmp_path: Path) -> None:
    import optuna

    repo = Path(__file__).resolve().parents[1]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _mwp(
        [
            "hparams_search=optuna_lr",
            "experiment=demo",
            "debug=default",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            f"hydra.sweeper.storage={storage}",
            "optimized_metric=eval/ood/flexible_acc",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=repo,
    )
    (sweep,) = (tmp_path / "demo" / "multiruns").iterdir()
    study = optuna.load_study(study_name="demo", storage=storage)
    assert len(study.trials) == 2
    for trial in study.trials:
        summary = json.loads((sweep / str(trial.number) / "summary.json").read_text())
        assert trial.value == pytest.approx(objective(summary, "eval/ood/flexible_acc"))
        config = (sweep / str(trial.number) / ".hydra" / "overrides.yaml").read_text()
        assert f"optim.lr={trial.params['optim.lr']}" in config
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.skipif(
    not (
        has_module("hydra_plugins.hydra_joblib_launcher")
        and has_module("hydra_plugins.hydra_submitit_launcher")
    ),
    reason="needs the launchers extra",
)
def test_launcher_configs_compose_onto_the_plugins_own() -> None:
    from hydra import compose, initialize_config_dir

    from tests.helpers import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        local = compose("config", ["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
        slurm = compose(
            "config", ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=4"], return_hydra_config=True
        ).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2
    assert slurm._target_.endswith("SlurmLauncher")
    # one task per GPU, and no requeue of a job whose fresh start would find its run folder taken
    assert (slurm.gpus_per_node, slurm.max_num_timeout) == (4, 0)
