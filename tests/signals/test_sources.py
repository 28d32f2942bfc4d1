"""Signal sources: what the LightningModule gets for a batch, whatever the teacher; supervised positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mwp.signals import (
    DenseTeacherSource,
    NoSignal,
    SignalSource,
    SparseBatch,
    SparseSignal,
    StoredSparseSource,
    collate_sparse,
    supervised_positions,
)
from mwp.student.codec import codec_for


def _batch() -> dict[str, torch.Tensor]:
    labels = torch.tensor([[4, 5, 6, -100], [7, 8, -100, -100]])
    signals = [
        SparseSignal(
            ids=torch.tensor([[4, 9], [5, -1], [-1, -1], [1, 2]]),
            logprobs=torch.tensor([[-0.1, -2.5], [-0.2, float("-inf")], [-1.0, -2.0], [-0.3, -1.3]]),
            mask=torch.tensor([True, True, True, True]),
        ),
        None,
    ]
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": labels}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch.update(collate_sparse(signals, labels.shape[1], labels=labels))
    return batch


def test_supervised_positions_are_labelled_masked_in_and_carry_an_id() -> None:
    batch = _batch()
    teacher = SparseBatch.from_batch(batch)
    # Row 0: position 2 has no valid id, position 3 is padding; row 1 has no signal at all.
    assert supervised_positions(batch["labels"], teacher).tolist() == [
        [True, True, False, False],
        [False, False, False, False],
    ]
    labelled = (batch["labels"] != -100).tolist()
    assert supervised_positions(batch["labels"]).tolist() == labelled
    assert supervised_positions(batch["labels"], torch.zeros(2, 4, 11)).tolist() == labelled


def test_stored_sparse_source_reads_the_collated_batch() -> None:
    batch = _batch()
    teacher = StoredSparseSource().signal(batch)
    assert isinstance(teacher, SparseBatch)
    assert teacher.ids is batch["teacher_ids"] and teacher.mask is batch["teacher_mask"]
    plain = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
    with pytest.raises(ValueError, match=r"need teacher signals.*loss\.signal\.source"):
        StoredSparseSource().signal(plain)
    assert NoSignal().signal(batch) is None
    with pytest.raises(TypeError):
        SignalSource()  # type: ignore[abstract]


TINY = {"d_model": 16, "d_ff": 32, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}


def _t5(flan_t5_dir, seed: int = 0, vocab: int | None = None) -> nn.Module:
    from mwp.student.model import build_student

    model = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=seed).model
    if vocab is not None:
        model.resize_token_embeddings(vocab)
    return model


def test_dense_teacher_source_runs_frozen_in_eval_mode_without_autograd(flan_t5_dir) -> None:
    teacher = _t5(flan_t5_dir)
    calls: list[tuple[bool, bool]] = []
    teacher.register_forward_hook(
        lambda module, args, out: calls.append((torch.is_grad_enabled(), module.training))
    )
    source = DenseTeacherSource(teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # e.g. something toggled it: the source still runs it in eval mode
    batch = _batch()
    logits = source.signal(batch)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    assert logits.shape == (2, 4, vocab) and not logits.requires_grad
    assert calls == [(False, False)]
    # The same logits as the teacher fed the shifted targets itself (what `labels=` would do).
    with torch.no_grad():
        reference = teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits
    torch.testing.assert_close(logits, reference)
    student = _t5(flan_t5_dir, seed=1)
    source.attach(student, codec_for(student, None))
    with pytest.raises(ValueError, match=r"loss\.signal\.teacher_model"):
        wide = _t5(flan_t5_dir, seed=1, vocab=vocab + 8)
        source.attach(wide, codec_for(wide, None))
    with pytest.raises(FileNotFoundError, match=r"loss\.signal\.teacher_model='/nonexistent'"):
        DenseTeacherSource.from_pretrained("/nonexistent")


def test_a_dense_teacher_reports_the_target_tokens_it_gave_a_distribution(flan_t5_dir, tmp_path) -> None:
    teacher = _t5(flan_t5_dir)
    teacher.save_pretrained(tmp_path / "teacher")
    source = DenseTeacherSource.from_pretrained(tmp_path / "teacher", top_k=3)
    assert source.report()["batches"] == 0 and source.report()["coverage"] == 0.0
    batch = _batch()
    labelled = int((batch["labels"] != -100).sum())
    source.signal(batch)
    source.signal(batch)
    assert source.report() == {
        "source": "dense",
        "teacher_model": str(tmp_path / "teacher"),
        "top_k": 3,
        "batches": 2,
        "target_tokens": 2 * labelled,
        "covered_tokens": 2 * labelled,
        "coverage": 1.0,
    }

    # a teacher whose logits went non-finite at one labelled position did not cover it
    def poison(module: nn.Module, args: object, out):  # type: ignore[no-untyped-def]
        out.logits[0, 1] = float("nan")
        return out

    broken = DenseTeacherSource(source.teacher)
    source.teacher.register_forward_hook(poison)
    broken.signal(batch)
    assert broken.report()["covered_tokens"] == labelled - 1 and broken.report()["target_tokens"] == labelled
    # sources that run no teacher report nothing
    assert NoSignal().report() is None and StoredSparseSource().report() is None


def test_a_dense_teachers_top_k_is_a_sparse_signal_and_its_full_width_is_the_dense_kl(flan_t5_dir) -> None:
    from mwp.student.losses import distill_loss

    teacher = _t5(flan_t5_dir)
    batch = _batch()
    logits = DenseTeacherSource(teacher).signal(batch)
    top5 = DenseTeacherSource(teacher, top_k=5).signal(batch)
    assert isinstance(top5, SparseBatch) and top5.ids.shape == (2, 4, 5)
    expected_lp, expected_ids = torch.log_softmax(logits.float(), -1).topk(5, dim=-1)
    assert torch.equal(top5.ids.long(), expected_ids)
    torch.testing.assert_close(top5.logprobs, expected_lp)
    assert torch.equal(top5.mask, batch["labels"] != -100)  # every labelled position, padding none
    # Keeping the whole vocabulary loses nothing: the bucketed sparse KL is the dense KL.
    vocab = logits.shape[-1]
    full = DenseTeacherSource(teacher, top_k=vocab).signal(batch)
    student = torch.randn_like(logits)
    mask = batch["labels"] != -100
    dense_kl = distill_loss("forward_kl", student, logits, mask=mask).total
    sparse_kl = distill_loss("forward_kl", student, full, mask=mask).total
    torch.testing.assert_close(sparse_kl, dense_kl, rtol=1e-4, atol=1e-4)
    # Fewer slots: the bucket is a coarsening, so a lower bound of the full KL.
    assert distill_loss("forward_kl", student, top5, mask=mask).total < dense_kl
    with pytest.raises(ValueError, match=r"loss\.signal\.dense_top_k"):
        DenseTeacherSource(teacher, top_k=0)
