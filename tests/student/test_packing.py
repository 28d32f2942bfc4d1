"""Packing causal students' training examples (`data.packing`): each example in a packed row computes what
it computes alone, the loss and the supervised-token counts do not change, and real SVAMP rationales
need fewer rows and less padding. The student is `student=tiny_causal` (SmolLM2's architecture and
real tokenizer, random init) on real distilled PaLM SVAMP rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mwp.config import ConfigError
from mwp.config.schema.loss_terms import LossTerm
from mwp.data.artifact import read_distilled
from mwp.pipeline import run
from mwp.refinement.middle_model import middle_model_config
from mwp.signals import DenseTeacherSource, SparseBatch, SparseSignal
from mwp.signals.positions import COT_ROWS_KEY, window_counts
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.student.codec import PACKED_INDEX_KEY, Seq2SeqCodec, pack_rows
from mwp.student.datamodule import DistilledDataModule, TrainCollator, build_train_items
from mwp.student.losses import combine
from tests.helpers import compose_config, typed_config

TINY = ["student=tiny_causal", "data.max_target_len=48"]
MAX_TARGET = 96


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("packing")
    run_distill(typed_config(["stage=distill", "dataset.limit=40"], run_dir=out), out / "distill")
    return read_distilled(out / "distill")


@pytest.fixture(scope="module")
def bundle():
    built = instantiate(compose_config(["student=tiny_causal"]).student, _convert_="all", seed=0)
    built.model.eval()
    return built


def _items(rows, n: int = 8):
    # Long chain-of-thought targets and short answer-only ones, as a multi-format batch mixes them.
    return build_train_items(rows[:n], ["zero_shot_cot", "zero_shot_answer"], 0, seed=0)[:n]


def _signals(rows, codec, k: int = 6) -> list[SparseSignal]:
    """A sparse top-k per distilled row over its target tokens, the label among the ids, some positions off."""
    g = torch.Generator().manual_seed(0)
    out = []
    for row in rows:
        target = torch.tensor(codec.target_ids(row.rationale, MAX_TARGET))
        ids = torch.randint(0, len(codec.tokenizer), (len(target), k), generator=g)
        ids[:, 0] = target
        logprobs = torch.log_softmax(torch.randn(len(target), k, generator=g) * 2, -1) - 0.1
        mask = torch.rand(len(target), generator=g) < 0.8
        out.append(SparseSignal(ids=ids, logprobs=logprobs, mask=mask, target_ids=target))
    return out


def test_first_fit_packing_keeps_every_example_once_within_the_row_length() -> None:
    lengths = [50, 10, 40, 30, 60, 5, 45]
    rows = pack_rows(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 3 and rows == pack_rows(lengths, 100)
    with pytest.raises(ValueError, match="60 tokens does not fit a packed row of 59"):
        pack_rows(lengths, 59)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_row_gives_each_example_the_logits_it_gets_unpacked(rows, bundle, attention: str) -> None:
    model, codec = bundle.model, bundle.codec
    model.set_attn_implementation(attention)
    items = _items(rows)
    sources, targets = [i.example.source for i in items], [i.example.target for i in items]
    unpacked = codec.train_batch(sources, targets, 512, MAX_TARGET)
    packed = codec.packed_train_batch(sources, targets, 512, MAX_TARGET, 400)
    rows_used = packed["input_ids"].shape[0]
    assert rows_used < len(items) and torch.equal(packed["labels"], unpacked["labels"])
    labelled = unpacked["labels"] != -100
    with torch.no_grad():
        expected = codec.logits(model, unpacked)[labelled]
        torch.testing.assert_close(codec.logits(model, packed)[labelled], expected, rtol=1e-4, atol=1e-4)
        # The check can fail: the same rows with positions running on across examples let each one
        # attend to the examples before it in its row.
        running = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand(rows_used, -1)}
        assert not torch.allclose(codec.logits(model, running)[labelled], expected, atol=1e-3)
    model.set_attn_implementation("sdpa")


def test_the_packed_loss_its_token_counts_and_gradients_equal_unpacked(rows, bundle) -> None:
    """Cross-entropy and a sparse KL on stored teacher top-k: same token means, same counts, same gradients."""
    model, codec = bundle.model, bundle.codec
    items = _items(rows)
    signals = _signals(rows, codec)
    terms = [LossTerm("ce"), LossTerm("kl")]
    results = []
    for packed_length in (None, 400):
        collate = TrainCollator(codec, 512, MAX_TARGET, signals=signals, k=6, packed_length=packed_length)
        batch = collate(items)
        assert (PACKED_INDEX_KEY in batch) == (packed_length is not None)
        model.zero_grad(set_to_none=True)
        teacher = SparseBatch.from_batch(batch)
        loss = combine(
            terms, codec.logits(model, batch), batch["labels"], teacher, cot_rows=batch[COT_ROWS_KEY]
        )
        loss.total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((batch, loss, window_counts([batch]), grads))
    (unpacked, loss, counts, grads), (packed, packed_loss, packed_counts, packed_grads) = results
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    for key in ("labels", "teacher_ids", "teacher_logprobs", "teacher_mask", COT_ROWS_KEY):
        assert torch.equal(packed[key], unpacked[key]), key
    assert {k: int(v) for k, v in packed_counts.items()} == {k: int(v) for k, v in counts.items()}
    assert counts["teacher"] > 0 and counts["labels:answer_only"] > 0
    assert packed_loss.n_tokens == loss.n_tokens
    for name, part in loss.parts.items():
        torch.testing.assert_close(packed_loss.parts[name], part, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-3, atol=1e-6)
    model.zero_grad(set_to_none=True)


def test_a_dense_teacher_scores_a_packed_batch_as_it_scores_it_unpacked(rows, bundle) -> None:
    """A same-vocabulary causal teacher runs on the student's batch layout, packed too."""
    teacher = instantiate(compose_config(["student=tiny_causal"]).student, _convert_="all", seed=1).model
    source = DenseTeacherSource(teacher, top_k=5)
    source.attach(bundle.model, bundle.codec)
    items = _items(rows)
    sources, targets = [i.example.source for i in items], [i.example.target for i in items]
    unpacked = source.signal(bundle.codec.train_batch(sources, targets, 512, MAX_TARGET))
    packed = source.signal(bundle.codec.packed_train_batch(sources, targets, 512, MAX_TARGET, 400))
    assert torch.equal(packed.mask, unpacked.mask)
    torch.testing.assert_close(
        packed.logprobs[packed.mask], unpacked.logprobs[unpacked.mask], atol=1e-4, rtol=1e-4
    )


def test_packing_cuts_rows_and_padding_on_real_svamp_rationales(rows, bundle) -> None:
    def epoch(packing: bool) -> dict[str, int]:
        dm = DistilledDataModule(
            rows, bundle.tokenizer, codec=bundle.codec, batch_size=8, packing=packing, seed=0
        )
        dm.setup("fit")
        totals = {"rows": 0, "cells": 0, "padding": 0, "labels": 0, "batches": 0}
        for batch in dm.train_dataloader():
            mask = batch["attention_mask"]
            totals["rows"] += mask.shape[0]
            totals["cells"] += mask.numel()
            totals["padding"] += int((mask == 0).sum())
            totals["labels"] += int((batch["labels"] != -100).sum())
            totals["batches"] += 1
        if packing:
            assert dm.stats["packing"]["packed_length"] == dm.max_source_len + dm.max_target_len
        return totals

    plain, packed = epoch(False), epoch(True)
    # The same micro-batches and supervised tokens; (on these 36 examples, 27 rows of 28% padding unpacked,
    # 15 rows of 16% packed) well under two thirds of the rows and of the padded cells.
    assert packed["batches"] == plain["batches"] and packed["labels"] == plain["labels"]
    assert packed["rows"] < 0.6 * plain["rows"] and packed["cells"] < plain["cells"]
    assert packed["padding"] < 0.6 * plain["padding"]


def test_packing_settings_are_checked_before_any_work(rows, bundle) -> None:
    with pytest.raises(ConfigError, match=r"data\.packing=true packs causal students' batches.*seq2seq"):
        load_config(compose_config(["data.packing=true"]))
    with pytest.raises(ConfigError, match=r"data\.packed_length=200 is shorter than one example can be"):
        load_config(
            compose_config([*TINY, "data.packing=true", "data.max_source_len=160", "data.packed_length=200"])
        )
    on_policy = ["loss=ce_kl", "loss.on_policy.fraction=0.5", "loss.signal.source=dense"]
    with pytest.raises(ConfigError, match=r"data\.packing=true: on-policy steps"):
        load_config(compose_config([*TINY, *on_policy, "loss.signal.teacher_model=.", "data.packing=true"]))
    with pytest.raises(ConfigError, match=r"data\.packed_length"):
        load_config(compose_config([*TINY, "data.packing=true", "data.packed_length=1"]))
    # Off, the keys do not enter the train stage's cache key.
    assert "packing" not in typed_config(TINY).data.settings()
    assert typed_config([*TINY, "data.packing=true"]).data.settings()["packing"] is True
    # The refine step's middle model packs only if it is causal too.
    packed_run = [*TINY, "data.packing=true", "refine=middle_model"]
    causal_middle = typed_config([*packed_run, "student@refine.middle_model.student=tiny_causal"])
    t5_middle = typed_config([*packed_run, "student@refine.middle_model.student=t5_equation"])
    assert middle_model_config(causal_middle, causal_middle.refine.middle_model).data.packing
    assert not middle_model_config(t5_middle, t5_middle.refine.middle_model).data.packing
    # What the config cannot know is checked on the data, before training.
    with pytest.raises(ConfigError, match=r"data\.packing=true .* this student is seq2seq"):
        DistilledDataModule(rows, bundle.tokenizer, codec=Seq2SeqCodec(bundle.tokenizer), packing=True)
    dm = DistilledDataModule(rows, bundle.tokenizer, codec=bundle.codec, packing=True, packed_length=64)
    with pytest.raises(
        ConfigError, match=r"data\.packed_length=64 is shorter than the longest training example"
    ):
        dm.setup("fit")


def test_a_packed_causal_student_trains_end_to_end(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "experiment=demo",
            "debug=default",
            *TINY,
            "data.packing=true",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "stage.steps=[distill,train]",
        ],
        run_dir=tmp_path,
    )
    summary = run(cfg)
    assert summary["status"] == "success" and summary["train"]["steps"] == 2
    stats = json.loads((tmp_path / "student" / "train_stats.json").read_text())
    assert stats["packing"]["packed_length"] == stats["max_source_len"] + 48
