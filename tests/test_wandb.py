"""W&B conventions, checked on real offline runs read back from disk: run identity and name, the
config and stepped metrics, artifacts with lineage, one finished run per multirun job, and a killed
run resumed into the same folder and the same W&B run id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mwp.loggers import WANDB_RUN, run_name
from mwp.pipeline import run
from tests.helpers import compose_config
from tests.wandb_records import OfflineRun, finished_runs

TINY = ["experiment=demo", "debug=default", "trainer.max_steps=2", "evaluation.limit=2"]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """W&B offline, with its caches and staging area inside the test's folder."""
    env = {
        "WANDB_MODE": "offline",
        "WANDB_CACHE_DIR": str(tmp_path / ".wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / ".wandb-data"),
        "WANDB_CONFIG_DIR": str(tmp_path / ".wandb-config"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _only_run(run_dir: Path) -> OfflineRun:
    (found,) = finished_runs(run_dir, 1)
    return found


def test_outside_a_hydra_job_the_run_is_named_after_its_folder(tmp_path: Path) -> None:
    cfg = compose_config(TINY, run_dir=tmp_path / "2026-01-01_00-00-00-000001")
    assert run_name(cfg) == "2026-01-01_00-00-00-000001"


def test_a_hydra_job_is_named_by_its_overrides_less_the_infrastructure(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tests.helpers import CONF_DIR

    overrides = ["loss=ce_kl", "seed=2", f"paths.log_dir={tmp_path}", "logger.wandb.project=x", "+tags=[a]"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
        cfg.paths.output_dir = str(tmp_path / "job")
    HydraConfig.instance().set_config(cfg)
    assert run_name(cfg) == "loss=ce_kl,seed=2,tags=[a]"
    # a Hydra config left over from another job in this process is not this run's
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "elsewhere")
    assert run_name(cfg) == "elsewhere"


@pytest.mark.slow
def test_a_pipeline_run_logs_config_stepped_metrics_and_artifacts_with_lineage(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    run_dir = tmp_path / "run"
    run(compose_config([*TINY, "logger.wandb.name=kd-demo", "tags=[demo,smoke]"], run_dir=run_dir))
    wb = _only_run(run_dir)
    assert json.loads((run_dir / WANDB_RUN).read_text()) == {"id": wb.id, "name": "kd-demo"}
    assert (wb.name, wb.group, wb.job_type, wb.tags, wb.exit_code) == (
        "kd-demo",
        "demo",
        "pipeline",
        ["demo", "smoke"],
        0,
    )
    # the resolved config, flattened
    assert wb.config["optim/lr"] == 1.0e-3
    assert wb.config["trainer/max_steps"] == 2
    # training metrics carry the trainer's global step
    steps = [h["trainer/global_step"] for h in wb.history if "train/loss" in h]
    assert steps and steps == sorted(steps)
    # evaluation metrics are logged at the last training step
    test_steps = {h.get("trainer/global_step") for h in wb.history if any(k.startswith("test/") for k in h)}
    assert test_steps == {max(steps)}

    by_type = {a[0]: a for a in wb.artifacts if a[0] != "run_table"}
    assert list(by_type) == ["teacher-samples", "distilled", "student", "predictions"]
    samples, distilled, student, predictions = by_type.values()
    # the teacher's recording is this run's input (marked used); the rest are its outputs
    assert samples[4] is True and not any(a[4] for a in (distilled, student, predictions))
    assert distilled[2]["inputs"] == [samples[1]]
    assert student[2]["inputs"] == [distilled[1]]
    assert predictions[2]["inputs"] == [student[1]]
    assert distilled[3] == {"distilled.jsonl": "file"}
    assert distilled[2]["stats"]["samples_kept"] > 0
    # the weights are referenced, not uploaded; the small files are
    assert student[3]["model.safetensors"] == "ref" and student[3]["config.json"] == "file"
    assert {"results.json", "predictions_svamp_test.jsonl"} <= set(predictions[3])
    # the predictions tables too
    assert any(a[0] == "run_table" and "predictions" in a[1] for a in wb.artifacts)


@pytest.mark.slow
def test_stage_jobs_chain_their_artifacts_by_name(tmp_path: Path, offline: dict[str, str]) -> None:
    """Each stage as its own job: a job marks used the very artifact (same name) the one before logged."""
    distill, train, evaluate = tmp_path / "distill", tmp_path / "train", tmp_path / "evaluate"
    run(compose_config([*TINY, "stage=distill"], run_dir=distill))
    run(compose_config([*TINY, "stage=train", f"stage.data={distill / 'distill'}"], run_dir=train))
    run(compose_config([*TINY, "stage=evaluate", f"stage.student={train / 'student'}"], run_dir=evaluate))
    runs = [_only_run(d) for d in (distill, train, evaluate)]
    assert [r.job_type for r in runs] == ["distill", "train", "evaluate"]
    assert len({r.id for r in runs}) == 3 and all(r.exit_code == 0 for r in runs)

    def outputs(r: OfflineRun) -> dict[str, str]:
        return {a[0]: a[1] for a in r.artifacts if not a[4] and a[0] != "run_table"}

    def used(r: OfflineRun) -> dict[str, str]:
        return {a[0]: a[1] for a in r.artifacts if a[4]}

    assert set(used(runs[0])) == {"teacher-samples"} and set(outputs(runs[0])) == {"distilled"}
    assert used(runs[1]) == {"distilled": outputs(runs[0])["distilled"]}
    assert used(runs[2]) == {"student": outputs(runs[1])["student"]}
    assert set(outputs(runs[2])) == {"predictions"}


@pytest.mark.slow
def test_a_multirun_makes_one_finished_run_per_job_named_by_what_it_sweeps(
    tmp_path: Path, offline: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb
    from hydra.core.global_hydra import GlobalHydra

    from mwp.cli.run import _app

    sweep = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["mwp", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}"])
    GlobalHydra.instance().clear()
    try:
        _app()
    finally:
        GlobalHydra.instance().clear()
    jobs = [_only_run(sweep / str(i)) for i in (0, 1)]
    assert [j.name for j in jobs] == ["seed=1", "seed=2"]
    assert jobs[0].id != jobs[1].id
    assert [j.exit_code for j in jobs] == [0, 0]
    assert {(j.group, j.job_type) for j in jobs} == {("demo", "pipeline")}
    assert wandb.run is None


def _step(ckpt: Path) -> int | None:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # not there yet, or being written
        return None


def _wandb_written(run_dir: Path) -> bool:
    return any(f.stat().st_size > 7 for f in run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_a_killed_training_run_resumes_into_the_same_folder_and_wandb_run(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    run_dir = tmp_path / "run"
    # W&B writes an offline run's records every 15 s by default: a kill loses what is not written yet.
    # Without WANDB_SERVICE: a W&B run earlier in this process leaves it set, and both jobs would then
    # share that process's W&B service, which still holds the killed run open.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update({**offline, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] = "1"
    common = [sys.executable, "-m", "mwp.cli", "experiment=demo", "debug=default", "evaluation.limit=2"]
    first = subprocess.Popen(
        [*common, "trainer.max_steps=400", "stage.checkpoint_every_n_steps=5", f"hydra.run.dir={run_dir}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        # Killed right after a complete checkpoint was read, once W&B has written the run's records.
        while not (_wandb_written(run_dir) and _step(ckpt) is not None):
            assert first.poll() is None, f"training ended before a checkpoint: {first.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
    killed_at = _step(ckpt)
    assert killed_at is not None and 0 < killed_at < 400
    stored = json.loads((run_dir / WANDB_RUN).read_text())
    assert not (run_dir / "summary.json").exists()

    target = killed_at + 3
    resumed = subprocess.run(
        [
            *common,
            f"trainer.max_steps={target}",
            f"stage.resume={run_dir}",
            f"hydra.run.dir={tmp_path / 'other'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "success" and summary["run_dir"] == str(run_dir)
    assert summary["train"]["steps"] == target
    assert _step(ckpt) == target

    killed, after = finished_runs(run_dir, 1)
    assert killed.id == after.id == stored["id"]
    assert after.name == killed.name == stored["name"]
    assert killed.exit_code is None and after.exit_code == 0
    # the resumed W&B run continues from the checkpoint's step, not from 0
    steps = [h["trainer/global_step"] for h in after.history if "train/loss" in h]
    assert steps and min(steps) >= killed_at and max(steps) <= target
