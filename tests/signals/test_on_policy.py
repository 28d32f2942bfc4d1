"""On-policy distillation (GKD): the student's own samples as targets on a seeded share of the steps."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from transformers import T5ForConditionalGeneration

from mwp.config.schema.loss_terms import LossTerm
from mwp.data.artifact import read_distilled
from mwp.signals.on_policy import ON_POLICY_KEY, OnPolicySource, is_on_policy_step, sampled_labels
from mwp.stages.distill import run_distill
from mwp.student.datamodule import TrainCollator, WindowedTrainLoader, build_train_items
from mwp.student.losses import forward_kl
from mwp.student.model import build_student
from mwp.student.module import StudentModule
from tests.helpers import bare_trainer, compose_config, typed_config

TINY = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def items_and_tokenizer(tmp_path_factory: pytest.TempPathFactory, flan_t5_dir: Path):
    """Eight real PaLM SVAMP rows as zero-shot CoT items, and the real Flan-T5 tokenizer."""
    out = tmp_path_factory.mktemp("on_policy")
    run_distill(typed_config(["stage=distill", "dataset.limit=20"], run_dir=out), out / "distill")
    rows = read_distilled(out / "distill")[:8]
    tokenizer = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY).tokenizer
    return build_train_items(rows, ["zero_shot_cot"], 0, seed=0), tokenizer


def _tiny_t5(flan_t5_dir: Path, seed: int) -> T5ForConditionalGeneration:
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=seed)
    config = copy.deepcopy(bundle.model.config)
    config.dropout_rate = 0.0
    model = T5ForConditionalGeneration(config)
    model.load_state_dict(bundle.model.state_dict())
    return model


class RecordingSource(OnPolicySource):
    """Keeps what each step trained on: the dataset labels, the samples, and what the teacher scored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, Any]] = []

    def targets(self, batch: dict[str, Any], student: torch.nn.Module, step: int) -> dict[str, Any]:
        out = super().targets(batch, student, step)
        self.steps.append({"step": step, "dataset": batch["labels"], "trained": out["labels"]})
        self.steps[-1]["on_policy"] = bool(out.get(ON_POLICY_KEY))
        return out

    def signal(self, batch):
        if self.steps:
            self.steps[-1]["scored"] = batch["labels"]
        return super().signal(batch)


class _LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _train(module: StudentModule, loader, steps: int, accumulate: int) -> _LossRecorder:
    pl.seed_everything(0)  # the samples, and so the losses, are the same on every run
    recorder = _LossRecorder()
    trainer = bare_trainer(steps, accumulate=accumulate, callbacks=[recorder])
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == steps
    return recorder


def test_on_policy_steps_are_a_seeded_share() -> None:
    draws = [is_on_policy_step(0.5, 7, step) for step in range(400)]
    assert draws == [is_on_policy_step(0.5, 7, step) for step in range(400)]
    assert draws != [is_on_policy_step(0.5, 8, step) for step in range(400)]
    assert 0.42 < sum(draws) / len(draws) < 0.58
    assert not any(is_on_policy_step(0.0, 7, s) for s in range(50))
    assert all(is_on_policy_step(1.0, 7, s) for s in range(50))


def test_sampled_labels_end_at_the_first_eos() -> None:
    sequences = torch.tensor([[5, 6, 1, 0, 0], [7, 8, 9, 4, 3]])
    labels = sampled_labels(sequences, eos_token_id=1)
    assert labels.tolist() == [[5, 6, 1, -100, -100], [7, 8, 9, 4, 3]]


def test_on_policy_source_validates_its_settings(flan_t5_dir: Path) -> None:
    teacher = _tiny_t5(flan_t5_dir, seed=1)
    with pytest.raises(ValueError, match=r"loss\.on_policy\.fraction"):
        OnPolicySource(teacher, fraction=1.5)
    with pytest.raises(ValueError, match=r"loss\.on_policy\.max_new_tokens"):
        OnPolicySource(teacher, fraction=0.5, max_new_tokens=0)


@pytest.mark.slow
def test_full_on_policy_trains_on_the_students_samples_and_lowers_the_loss(
    items_and_tokenizer, flan_t5_dir: Path
) -> None:
    items, tokenizer = items_and_tokenizer
    teacher = _tiny_t5(flan_t5_dir, seed=1)
    source = RecordingSource(teacher, fraction=1.0, temperature=1.0, max_new_tokens=12, seed=0)
    module = StudentModule(
        _tiny_t5(flan_t5_dir, seed=0),
        tokenizer,
        lr=3e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        terms=[LossTerm("ce"), LossTerm("kl")],
        signal_source=source,
    )
    loader = WindowedTrainLoader(items, TrainCollator(tokenizer, 128, 96), batch_size=4, shuffle=False)
    probe = next(iter(loader))
    probe_inputs = {k: probe[k] for k in ("input_ids", "attention_mask", "labels")}

    def probe_kl() -> float:
        with torch.no_grad():
            return forward_kl(module(probe_inputs), source.signal(probe_inputs)).mean().item()

    before = probe_kl()
    source.steps.clear()
    recorder = _train(module, loader, steps=12, accumulate=1)
    assert len(source.steps) == 12 and all(s["on_policy"] for s in source.steps)
    for step in source.steps:
        trained, dataset = step["trained"], step["dataset"]
        # The teacher scored the student's samples, not the dataset targets.
        assert step["scored"] is trained
        assert trained.shape[1] <= 12 and not torch.equal(
            trained[:, : dataset.shape[1]], dataset[:, : trained.shape[1]]
        )
    assert len(recorder.losses) == 12
    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert last < first
    assert probe_kl() < before


@pytest.mark.slow
def test_half_on_policy_follows_the_seeded_draw_per_optimizer_step(
    items_and_tokenizer, flan_t5_dir: Path
) -> None:
    items, tokenizer = items_and_tokenizer
    source = RecordingSource(_tiny_t5(flan_t5_dir, seed=1), fraction=0.5, max_new_tokens=6, seed=3)
    module = StudentModule(
        _tiny_t5(flan_t5_dir, seed=0),
        tokenizer,
        lr=1e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        terms=[LossTerm("ce"), LossTerm("kl")],
        signal_source=source,
    )
    loader = WindowedTrainLoader(
        items, TrainCollator(tokenizer, 128, 96), batch_size=2, accumulate=2, shuffle=False
    )
    steps = 8
    _train(module, loader, steps=steps, accumulate=2)
    expected = [is_on_policy_step(0.5, 3, s) for s in range(steps)]
    assert 0 < sum(expected) < steps  # this seed mixes both kinds: the test has teeth
    assert [s["step"] for s in source.steps] == [s // 2 for s in range(2 * steps)]
    assert [s["on_policy"] for s in source.steps] == [e for e in expected for _ in range(2)]
    for record in source.steps:
        assert torch.equal(record["trained"], record["dataset"]) != record["on_policy"]


@pytest.mark.slow
def test_on_policy_training_runs_under_ddp_from_the_command_line(tmp_path: Path) -> None:
    """`loss.on_policy.fraction=1` through the real `mwp` command on two CPU ranks (gloo)."""
    import csv
    import os
    import subprocess
    import sys

    from mwp.stages.distill import run_distill

    out = tmp_path / "data"
    run_distill(typed_config(["stage=distill", "dataset.limit=12"], run_dir=out), out / "distill")
    tiny = compose_config(["student=flan_t5_tiny"]).student
    size = {k: v for k, v in tiny.size.items() if v is not None}
    teacher = build_student("x", pretrained="never", fallback_config=tiny.fallback_config, size=size, seed=1)
    teacher.model.save_pretrained(tmp_path / "teacher")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(Path.cwd())}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(var, None)
    run_dir = tmp_path / "run"
    overrides = [
        "stage=train",
        f"stage.data={out / 'distill'}",
        "student=flan_t5_tiny",
        "data.val_fraction=0.0",
        "data.max_source_len=96",
        "data.max_target_len=64",
        "data.batch_size=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
        "logger=csv",
        "loss=ce_kl",
        "loss.signal.source=dense",
        f"loss.signal.teacher_model={tmp_path / 'teacher'}",
        "loss.on_policy.fraction=1.0",
        "loss.on_policy.max_new_tokens=8",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.devices=2",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", *overrides], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr
    (metrics,) = run_dir.glob("**/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/on_policy")]
    assert rows and all(float(r["train/on_policy"]) == 1.0 for r in rows)
    assert all(float(r["train/kl"]) > 0 for r in rows if r.get("train/kl"))
