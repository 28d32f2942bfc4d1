"""StudentModule under Lightning: exact token means under gradient accumulation, and a dense teacher."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import T5ForConditionalGeneration

from mwp.config.schema.loss_terms import LossTerm
from mwp.data.artifact import read_distilled
from mwp.signals import DenseTeacherSource, StoredSparseSource
from mwp.stages.distill import run_distill
from mwp.student.datamodule import TrainCollator, WindowedTrainLoader, build_train_items
from mwp.student.model import build_student
from mwp.student.module import StudentModule
from tests.helpers import bare_trainer, typed_config

TINY = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
MAX_TARGET = 96


@pytest.fixture(scope="module")
def uneven_items(tmp_path_factory: pytest.TempPathFactory, flan_t5_dir: Path):
    """Four real PaLM SVAMP rows whose CoT targets differ a lot in length."""
    out = tmp_path_factory.mktemp("module")
    run_distill(typed_config(["stage=distill", "dataset.limit=40"], run_dir=out), out / "distill")
    rows = sorted(read_distilled(out / "distill"), key=lambda r: len(r.rationale))
    picked = [rows[0], rows[-1], rows[len(rows) // 2], rows[1]]
    tokenizer = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY).tokenizer
    items = build_train_items(picked, ["zero_shot_cot"], 0, seed=0)
    return items, tokenizer


def _student(flan_t5_dir: Path, terms=None, signal_source=None, **optim) -> StudentModule:
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=0)
    # Without dropout: runs of different batch shapes must compute the same function.
    config = copy.deepcopy(bundle.model.config)
    config.dropout_rate = 0.0
    model = T5ForConditionalGeneration(config)
    model.load_state_dict(bundle.model.state_dict())
    settings = {"lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "constant", **optim}
    return StudentModule(model, bundle.tokenizer, terms=terms, signal_source=signal_source, **settings)


class _GradientRecorder(pl.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


def _one_step(
    module: StudentModule, loader: DataLoader, accumulate: int, **trainer_kwargs
) -> _GradientRecorder:
    recorder = _GradientRecorder()
    trainer = bare_trainer(1, accumulate=accumulate, callbacks=[recorder], **trainer_kwargs)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1
    return recorder


def _grouped_loader(items, tokenizer, batch_size: int, accumulate: int) -> WindowedTrainLoader:
    collate = TrainCollator(tokenizer, 128, MAX_TARGET)
    return WindowedTrainLoader(items, collate, batch_size=batch_size, accumulate=accumulate, shuffle=False)


@pytest.mark.slow
def test_accumulated_micro_batches_give_the_big_batch_step(uneven_items, flan_t5_dir: Path) -> None:
    items, tokenizer = uneven_items
    encoded = tokenizer([i.example.target for i in items], max_length=MAX_TARGET, truncation=True)
    counts = [len(ids) for ids in encoded["input_ids"]]
    assert counts[0] + counts[1] != counts[2] + counts[3]  # uneven micro-batches: the test has teeth

    big = _student(flan_t5_dir)
    big_grads = _one_step(big, _grouped_loader(items, tokenizer, 4, 1), 1).grads
    accumulated = _student(flan_t5_dir)
    accumulated_grads = _one_step(accumulated, _grouped_loader(items, tokenizer, 2, 2), 2).grads

    assert big_grads.keys() == accumulated_grads.keys() and big_grads
    for name, grad in big_grads.items():
        torch.testing.assert_close(accumulated_grads[name], grad, rtol=1e-4, atol=1e-7)
    for (name, a), (_, b) in zip(
        big.model.named_parameters(), accumulated.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)

    # The naive per-micro-batch token mean (what a plain DataLoader without group counts gives).
    naive = _student(flan_t5_dir)
    plain = DataLoader(
        items, batch_size=2, shuffle=False, collate_fn=TrainCollator(tokenizer, 128, MAX_TARGET)
    )
    naive_grads = _one_step(naive, plain, 2).grads
    assert any(not torch.allclose(naive_grads[n], big_grads[n], rtol=1e-3, atol=1e-7) for n in big_grads)
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(big.model.parameters(), naive.model.parameters(), strict=True)
    )
    assert moved > 1e-5


def test_grouping_must_match_the_trainer(uneven_items, flan_t5_dir: Path) -> None:
    items, tokenizer = uneven_items
    with pytest.raises(ValueError, match="accumulate_grad_batches=1"):
        _one_step(_student(flan_t5_dir), _grouped_loader(items, tokenizer, 2, 2), 1)


def _metrics(log_dir: Path) -> list[dict[str, str]]:
    (path,) = log_dir.glob("**/metrics.csv")
    return list(csv.DictReader(path.open()))


@pytest.mark.slow
def test_dense_teacher_equal_to_the_student_gives_zero_kl(
    uneven_items, flan_t5_dir: Path, tmp_path: Path
) -> None:
    items, tokenizer = uneven_items
    terms = [LossTerm("ce"), LossTerm("kl", weight=0.5)]
    probe = _student(flan_t5_dir)
    module = _student(flan_t5_dir, terms=terms, signal_source=DenseTeacherSource(copy.deepcopy(probe.model)))
    _one_step(
        module, _grouped_loader(items, tokenizer, 4, 1), 1, logger=CSVLogger(tmp_path), log_every_n_steps=1
    )
    (row,) = [r for r in _metrics(tmp_path) if r.get("train/kl")]
    assert abs(float(row["train/kl"])) < 1e-6
    assert float(row["train/ce"]) > 1.0  # a random init is far from the targets
    # The teacher stays frozen and outside the trained (and checkpointed) parameters.
    assert not any(k.startswith("dense_teacher") for k in module.state_dict())
    assert all(k.startswith("model.") for k in module.state_dict())
    for a, b in zip(module.signal_source.teacher.parameters(), probe.model.parameters(), strict=True):
        assert torch.equal(a, b) and not a.requires_grad

    # A different teacher gives a positive KL.
    other = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=1).model
    module = _student(flan_t5_dir, terms=terms, signal_source=DenseTeacherSource(other))
    _one_step(
        module,
        _grouped_loader(items, tokenizer, 4, 1),
        1,
        logger=CSVLogger(tmp_path / "b"),
        log_every_n_steps=1,
    )
    (row,) = [r for r in _metrics(tmp_path / "b") if r.get("train/kl")]
    assert float(row["train/kl"]) > 1e-3


def test_dense_teacher_needs_the_student_vocabulary(flan_t5_dir: Path) -> None:
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=0)
    teacher = copy.deepcopy(bundle.model)
    teacher.resize_token_embeddings(1000)
    with pytest.raises(ValueError, match=r"loss\.signal\.teacher_model"):
        StudentModule(
            bundle.model,
            bundle.tokenizer,
            terms=[LossTerm("ce"), LossTerm("kl")],
            signal_source=DenseTeacherSource(teacher),
        )


def test_a_kl_term_without_teacher_signals_is_a_clear_error(uneven_items, flan_t5_dir: Path) -> None:
    items, tokenizer = uneven_items
    module = _student(flan_t5_dir, terms=[LossTerm("ce"), LossTerm("kl")], signal_source=StoredSparseSource())
    with pytest.raises(ValueError, match="need teacher signals"):
        _one_step(module, _grouped_loader(items, tokenizer, 4, 1), 1)


def test_a_pretrained_student_trains_in_train_mode(flan_t5_dir: Path, tmp_path: Path) -> None:
    """`from_pretrained` hands back a model in eval mode; training must still run with dropout on."""
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=0)
    bundle.model.save_pretrained(tmp_path / "saved")
    bundle.tokenizer.save_pretrained(tmp_path / "saved")
    loaded = build_student(str(tmp_path / "saved"), pretrained="required")
    assert loaded.pretrained and not loaded.model.training

    seen: list[bool] = []

    class Modes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(pl_module.model.training)

    items = build_train_items(
        [r for r in read_distilled(_distilled(tmp_path))][:4], ["zero_shot_cot"], 0, seed=0
    )
    loader = DataLoader(items, batch_size=2, collate_fn=TrainCollator(loaded.tokenizer, 128, MAX_TARGET))
    module = StudentModule(loaded.model, loaded.tokenizer, lr=1e-3, warmup_ratio=0.0, scheduler="constant")
    bare_trainer(1, callbacks=[Modes()]).fit(module, train_dataloaders=loader)
    assert seen == [True]


def _distilled(tmp_path: Path) -> Path:
    run_distill(typed_config(["stage=distill", "dataset.limit=8"], run_dir=tmp_path), tmp_path / "distill")
    return tmp_path / "distill"


class _LearningRates(pl.Callback):
    """The lr each optimizer step used, and the lr the schedule ends at."""

    def __init__(self) -> None:
        self.used: list[float] = []
        self.final: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.used.append(optimizer.param_groups[0]["lr"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.final = trainer.optimizers[0].param_groups[0]["lr"]


def _train_schedule(
    uneven_items, flan_t5_dir: Path, *, accumulate: int, epochs: int, **optim
) -> tuple[_LearningRates, pl.Trainer]:
    """`epochs` epochs of 6 micro-batches of one short example each, `accumulate` to an optimizer step."""
    items, tokenizer = uneven_items
    loader = _grouped_loader([items[0], items[3]] * 3, tokenizer, 1, accumulate)
    rates = _LearningRates()
    trainer = bare_trainer(-1, accumulate=accumulate, callbacks=[rates], max_epochs=epochs)
    trainer.fit(_student(flan_t5_dir, lr=5e-4, scheduler="cosine", **optim), train_dataloaders=loader)
    assert trainer.global_step == len(rates.used) == epochs * 6 // accumulate
    return rates, trainer


def test_fu2023_schedule_warms_up_for_ten_steps_and_decays_as_their_scheduler_does(
    uneven_items, flan_t5_dir: Path
) -> None:
    peak = 5e-4
    rates, _ = _train_schedule(
        uneven_items,
        flan_t5_dir,
        accumulate=3,
        epochs=10,
        warmup_steps=10,
        schedule_length="micro_batches",
    )
    # Their scheduler, analytically: sized in micro-batches (T = 10 epochs x L = 6 = 60), stepped once per
    # optimizer step (s = 10 L / a = 20 steps), 10 of linear warm-up from factor 0 at the first step.
    micro, accumulate, warmup = 6, 3, 10
    length = 10 * micro

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (length - warmup)))

    steps = 10 * micro // accumulate
    assert rates.used == pytest.approx([peak * factor(k) for k in range(steps)], abs=1e-12)
    assert rates.used[0] == 0.0 and max(rates.used) == pytest.approx(peak)
    # the run stops a fifth of the way along the cosine: 0.5 (1 + cos(pi (10L/a - 10) / (10L - 10)))
    assert rates.final == pytest.approx(peak * factor(steps), rel=1e-9)
    assert factor(steps) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 50)))
    assert 0.9 < factor(steps) < 1.0
    # the same run sized in optimizer steps (mwp's default) ends the cosine at 0
    default, _ = _train_schedule(
        uneven_items, flan_t5_dir, accumulate=3, epochs=10, warmup_steps=10, schedule_length="optimizer_steps"
    )
    assert default.used[:warmup] == rates.used[:warmup]
    assert default.final == pytest.approx(0.0, abs=1e-12)


def test_the_default_schedule_runs_its_course_and_decays_matrices_only(
    uneven_items, flan_t5_dir: Path
) -> None:
    rates, trainer = _train_schedule(
        uneven_items, flan_t5_dir, accumulate=1, epochs=2, warmup_ratio=0.25, weight_decay=0.01
    )
    # a 25% warm-up of 12 steps is 3 steps; the cosine then ends at 0
    peak = 5e-4
    assert rates.used[:4] == pytest.approx([0.0, peak / 3, 2 * peak / 3, peak], abs=1e-12)
    assert rates.final == pytest.approx(0.0, abs=1e-12)
    decayed, exempt = trainer.optimizers[0].param_groups
    norms = [p for n, p in trainer.lightning_module.model.named_parameters() if "layer_norm" in n]
    assert norms and all(any(p is q for q in exempt["params"]) for p in norms)
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.01, 0.0)


def test_weight_decay_on_all_parameters_is_one_group(flan_t5_dir: Path, uneven_items) -> None:
    items, tokenizer = uneven_items
    module = _student(flan_t5_dir, weight_decay=0.01, weight_decay_on="all")
    trainer = bare_trainer(1)
    trainer.fit(module, train_dataloaders=_grouped_loader(items[:1], tokenizer, 1, 1))
    (group,) = trainer.optimizers[0].param_groups
    assert group["weight_decay"] == 0.01
    assert len(group["params"]) == len([p for p in module.model.parameters() if p.requires_grad])
