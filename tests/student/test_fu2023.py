"""`loss=fu2023`: Fu et al.'s recipe composes, and a training step puts KL on CoT rows only."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import T5ForConditionalGeneration

from mwp.config.schema.loss_terms import LossTerm
from mwp.data.artifact import read_distilled
from mwp.data.formats import cot_target
from mwp.signals import DenseSignal, SparseBatch, SparseSignal, StoredSparseSource
from mwp.stages.distill import run_distill
from mwp.student.datamodule import TrainCollator, WindowedTrainLoader, build_train_items
from mwp.student.losses import combine
from mwp.student.model import build_student
from mwp.student.module import StudentModule
from tests.helpers import bare_trainer, typed_config

TINY = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
MAX_TARGET = 96


def test_fu2023_composes_validates_and_names_its_switches(tmp_path: Path) -> None:
    config = typed_config(["loss=fu2023"], run_dir=tmp_path)
    ce, kl = config.loss.terms
    assert (ce.kind, ce.targets) == ("ce", "answer_only")
    assert (kl.kind, kl.targets, kl.tail, kl.top_k, kl.unaligned) == (
        "forward_kl",
        "cot",
        "none",
        6,  # the sampled token and the teacher's top-5
        "one_hot",
    )
    assert config.loss.signal.alignment == "fu2023"
    assert config.loss.on_policy.fraction == 0.0


def _tiny_t5(flan_t5_dir: Path, seed: int) -> T5ForConditionalGeneration:
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=seed)
    config = copy.deepcopy(bundle.model.config)
    config.dropout_rate = 0.0
    model = T5ForConditionalGeneration(config)
    model.load_state_dict(bundle.model.state_dict())
    return model


@pytest.fixture(scope="module")
def mixed_setup(tmp_path_factory: pytest.TempPathFactory, flan_t5_dir: Path):
    """Real PaLM rows in a CoT and an answer-only format, with top-8 sparse signals from a tiny T5
    teacher on every CoT target; every third position is left unaligned."""
    out = tmp_path_factory.mktemp("fu2023")
    run_distill(typed_config(["stage=distill", "dataset.limit=20"], run_dir=out), out / "distill")
    rows = read_distilled(out / "distill")[:4]
    tokenizer = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY).tokenizer
    teacher = _tiny_t5(flan_t5_dir, seed=1)
    signals = []
    for row in rows:
        target = tokenizer(cot_target(row.problem, row.rationale), max_length=MAX_TARGET, truncation=True)
        ids = torch.tensor([target["input_ids"]])
        with torch.no_grad():
            logits = teacher(input_ids=ids, decoder_input_ids=teacher._shift_right(ids)).logits[0]
        dense = DenseSignal(logits).to_sparse(8, target_ids=ids[0])
        mask = torch.arange(len(dense)) % 3 != 0
        signals.append(SparseSignal(dense.ids, dense.logprobs, mask, dense.target_ids))
    items = build_train_items(rows, ["zero_shot_cot", "zero_shot_answer"], 0, seed=0)
    return items, tokenizer, signals


def test_fu2023_puts_kl_on_cot_rows_and_cross_entropy_on_answer_rows(mixed_setup, tmp_path: Path) -> None:
    items, tokenizer, signals = mixed_setup
    terms = typed_config(["loss=fu2023"], run_dir=tmp_path).loss.terms
    batch = TrainCollator(tokenizer, 128, MAX_TARGET, signals=signals)(items)
    cot_rows = batch["cot_rows"]
    assert cot_rows.any() and (~cot_rows).any()
    labelled = batch["labels"] != -100
    logits = torch.randn(*batch["labels"].shape, 32128, generator=torch.Generator().manual_seed(0))
    combined = combine(terms, logits, batch["labels"], SparseBatch.from_batch(batch), cot_rows=cot_rows)
    # KL on every labelled CoT token (one-hot where unaligned), cross-entropy on answer-only tokens.
    assert int(combined.n_tokens["kl"]) == int(labelled[cot_rows].sum())
    assert int(combined.n_tokens["ce"]) == int(labelled[~cot_rows].sum())
    assert not SparseBatch.from_batch(batch).mask[~cot_rows].any()
    # Answer-only rows do not reach the KL term, CoT rows do not reach cross-entropy.
    moved = logits.clone()
    moved[~cot_rows] += 3.0 * torch.randn(moved[~cot_rows].shape, generator=torch.Generator().manual_seed(1))
    again = combine(terms, moved, batch["labels"], SparseBatch.from_batch(batch), cot_rows=cot_rows)
    assert torch.allclose(again.parts["kl"], combined.parts["kl"])
    assert not torch.allclose(again.parts["ce"], combined.parts["ce"])


class _GradientRecorder(pl.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


def _step_grads(
    flan_t5_dir: Path, tokenizer, terms: list[LossTerm], loader: WindowedTrainLoader, accumulate: int
) -> dict[str, torch.Tensor]:
    module = StudentModule(
        _tiny_t5(flan_t5_dir, seed=0),
        tokenizer,
        lr=1e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        terms=terms,
        signal_source=StoredSparseSource(),
    )
    recorder = _GradientRecorder()
    trainer = bare_trainer(1, accumulate=accumulate, callbacks=[recorder])
    trainer.fit(module, train_dataloaders=loader)
    return recorder.grads


@pytest.mark.slow
def test_a_fu2023_step_is_exact_under_gradient_accumulation(mixed_setup, flan_t5_dir: Path, tmp_path) -> None:
    items, tokenizer, signals = mixed_setup
    terms = typed_config(["loss=fu2023"], run_dir=tmp_path).loss.terms
    collate = TrainCollator(tokenizer, 128, MAX_TARGET, signals=signals)
    n = len(items)
    whole = WindowedTrainLoader(items, collate, batch_size=n, accumulate=1, shuffle=False)
    split = WindowedTrainLoader(items, collate, batch_size=n // 2, accumulate=2, shuffle=False)
    big = _step_grads(flan_t5_dir, tokenizer, terms, whole, 1)
    accumulated = _step_grads(flan_t5_dir, tokenizer, terms, split, 2)
    assert big and big.keys() == accumulated.keys()
    # The one-batch step is the gradient of each term's own token mean over the whole batch.
    model = _tiny_t5(flan_t5_dir, seed=0)
    batch = collate(items)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=model._shift_right(batch["labels"]),
    ).logits
    direct = combine(
        terms, logits, batch["labels"], SparseBatch.from_batch(batch), cot_rows=batch["cot_rows"]
    )
    direct.total.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(big[name], param.grad, rtol=1e-4, atol=1e-7)
    for name, grad in big.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-7)
