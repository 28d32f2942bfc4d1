"""Training that scales out and survives a kill: DDP on two CPU processes and an exact mid-epoch resume.

Both run the real `mwp` command line on real distilled SVAMP rows with a tiny random-init student
(dropout off, so runs of different layouts compute the same function).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mwp.stages.distill import run_distill
from tests.helpers import typed_config

pytestmark = pytest.mark.slow

# Both kinds of student, each without dropout (SmolLM2's architecture has none).
STUDENTS = {
    "flan_t5_tiny": ["student=flan_t5_tiny", "student.size.dropout_rate=0.0"],
    "tiny_causal": ["student=tiny_causal"],
}
TRAIN = [
    "stage=train",
    "data.val_fraction=0.0",
    "data.max_source_len=96",
    "data.max_target_len=64",
    "optim.scheduler=constant",
    "optim.warmup_ratio=0.0",
    "logger=csv",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    run_distill(typed_config(["stage=distill", "dataset.limit=40"], run_dir=out), out / "distill")
    return out / "distill"


def _mwp(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(Path.cwd())}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "student" / "model.safetensors")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("student", list(STUDENTS))
def test_ddp_on_two_processes_matches_one_process_with_the_doubled_batch(
    distilled: Path, tmp_path: Path, student: str
) -> None:
    common = [
        *TRAIN,
        *STUDENTS[student],
        f"stage.data={distilled}",
        "data.shuffle=false",
        "trainer.max_steps=3",
        "callbacks=none",
        "optim.lr=1e-4",
    ]
    grads = "+callbacks.grads._target_=tests.callbacks.SaveFirstGradients"
    single = _mwp(
        tmp_path / "single",
        *common,
        "data.batch_size=4",
        grads,
        f"+callbacks.grads.path={tmp_path / 'single.pt'}",
    )
    ddp = _mwp(
        tmp_path / "ddp",
        *common,
        grads,
        f"+callbacks.grads.path={tmp_path / 'ddp.pt'}",
        "data.batch_size=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.devices=2",
    )
    output = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1" in output and "MEMBER: 2/2" in output, output[-3000:]
    assert "rank 1" not in single.stderr
    # The all-reduced gradient of two ranks is the one-process gradient of the doubled batch: each
    # rank divides by the global token count, though the ranks' targets differ in length.
    single_grads = torch.load(tmp_path / "single.pt")
    ddp_grads = torch.load(tmp_path / "ddp.pt")
    assert single_grads.keys() == ddp_grads.keys() and single_grads
    for name, grad in single_grads.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    # After 3 AdamW steps the parameters agree up to the gradients' float round-off, which Adam's
    # per-element normalisation lifts towards lr on the few elements whose gradient is near zero.
    trained = _weights(tmp_path / "single")
    _assert_same(trained, _weights(tmp_path / "ddp"), atol=1e-5)
    # Training moved the weights: equal parameters are not two untouched random inits.
    from hydra.utils import instantiate

    from mwp.student.fit import student_config

    init = instantiate(student_config(typed_config(STUDENTS[student])), _convert_="all").model.state_dict()
    assert max((trained[k] - init[k]).abs().max().item() for k in trained if k in init) > 1e-4


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_parameters(
    distilled: Path, tmp_path: Path
) -> None:
    common = [
        *TRAIN,
        *STUDENTS["flan_t5_tiny"],
        f"stage.data={distilled}",
        "data.batch_size=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.max_steps=9",
        "stage.checkpoint_every_n_steps=1",
        "optim.lr=3e-3",
    ]
    # its own stage cache: the resumed run below must train, not reuse this run's student
    _mwp(tmp_path / "whole", *common, f"cache.dir={tmp_path / 'whole-cache'}")

    killed = _mwp(
        tmp_path / "killed",
        *common,
        "+callbacks.kill._target_=tests.callbacks.KillAtStep",
        "+callbacks.kill.step=3",
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "killed" / "student").exists()
    state = torch.load(
        tmp_path / "killed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert state["global_step"] == 3
    # Mid-epoch: 3 steps × 2 micro-batches of an epoch that has more.
    assert state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0

    resumed = _mwp(tmp_path / "resume-log", *common, f"stage.resume={tmp_path / 'killed'}")
    assert "resuming training from" in resumed.stderr + resumed.stdout
    assert "not resumable" not in resumed.stderr
    _assert_same(_weights(tmp_path / "whole"), _weights(tmp_path / "killed"))
