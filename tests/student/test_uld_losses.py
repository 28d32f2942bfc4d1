"""Tokenizer-free losses (ULD, the GOLD-style hybrid) and Fu et al.'s switches: hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mwp.config.schema.loss_terms import LossTerm
from mwp.signals import SparseBatch
from mwp.student.losses import (
    combine,
    count_tokens,
    cross_entropy,
    distill_loss,
    hybrid_loss,
    keep_top_slots,
    uld_loss,
    with_one_hot_fallback,
)

NEG_INF = float("-inf")


def _logits_of(probs: list[float]) -> torch.Tensor:
    """`[1, 1, V]` logits whose softmax is `probs`."""
    return torch.tensor(probs, dtype=torch.float64).log().view(1, 1, -1)


def _sparse(ids: list[int], probs: list[float], in_vocab: list[bool] | None = None) -> SparseBatch:
    logprobs = [math.log(p) if p > 0 else NEG_INF for p in probs]
    return SparseBatch(
        torch.tensor(ids).view(1, 1, -1),
        torch.tensor(logprobs, dtype=torch.float64).view(1, 1, -1),
        torch.ones(1, 1, dtype=torch.bool),
        None if in_vocab is None else torch.tensor(in_vocab).view(1, 1, -1),
    )


def _random_logits(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# --- ULD --------------------------------------------------------------------------------------------


def test_uld_is_zero_for_identical_distributions() -> None:
    logits = _random_logits(2, 3, 11, seed=0)
    assert uld_loss(logits, logits.clone()).total.item() == pytest.approx(0.0, abs=1e-12)
    logprobs, ids = logits.log_softmax(-1).topk(4, dim=-1)
    sparse = SparseBatch(ids, logprobs, torch.ones(2, 3, dtype=torch.bool))
    for tail in ("none", "renormalize"):
        assert uld_loss(logits, sparse, tail=tail).total.item() == pytest.approx(0.0, abs=1e-12)


def test_uld_on_hand_computed_examples() -> None:
    student = _logits_of([0.2, 0.1, 0.7])
    # Sparse top-2 teacher [0.5, 0.3] vs the student's top-2 [0.7, 0.2]: |0.5-0.7| + |0.3-0.2|.
    summed = uld_loss(student, _sparse([2, 0], [0.3, 0.5]))
    assert summed.total.item() == pytest.approx(0.3, abs=1e-12) and int(summed.n_tokens) == 1
    # Renormalised: [0.625, 0.375] vs [7/9, 2/9].
    renormalised = uld_loss(student, _sparse([2, 0], [0.3, 0.5]), tail="renormalize").total.item()
    assert renormalised == pytest.approx(abs(0.625 - 7 / 9) + abs(0.375 - 2 / 9), abs=1e-12)
    # A dense teacher with a smaller vocabulary: [0.6, 0.4, 0] vs [0.7, 0.2, 0.1].
    dense_teacher = _logits_of([0.4, 0.6])
    assert uld_loss(student, dense_teacher).total.item() == pytest.approx(0.4, abs=1e-12)


def test_uld_is_invariant_to_permuting_either_vocabulary() -> None:
    student = _random_logits(2, 4, 13, seed=1)
    teacher = _random_logits(2, 4, 9, seed=2)
    reference = uld_loss(student, teacher).total
    g = torch.Generator().manual_seed(3)
    assert torch.allclose(uld_loss(student[..., torch.randperm(13, generator=g)], teacher).total, reference)
    assert torch.allclose(uld_loss(student, teacher[..., torch.randperm(9, generator=g)]).total, reference)
    # A sparse teacher's ids are never read: relabelling them changes nothing.
    logprobs, ids = teacher.log_softmax(-1).topk(3, dim=-1)
    mask = torch.ones(2, 4, dtype=torch.bool)
    sparse = uld_loss(student, SparseBatch(ids, logprobs, mask)).total
    relabelled = uld_loss(student, SparseBatch((ids * 7 + 1) % 13, logprobs, mask)).total
    assert torch.allclose(sparse, relabelled) and sparse.item() > 0


def test_uld_ignores_masked_and_uncovered_positions() -> None:
    student = _random_logits(1, 3, 7, seed=4)
    teacher = _random_logits(1, 3, 7, seed=5)
    mask = torch.tensor([[True, False, True]])
    masked = uld_loss(student, teacher, mask=mask)
    each = [uld_loss(student[:, i : i + 1], teacher[:, i : i + 1]).total for i in range(3)]
    assert int(masked.n_tokens) == 2
    assert torch.allclose(masked.total, each[0] + each[2])
    # Garbage at the masked position does not leak in.
    poisoned = student.clone()
    poisoned[0, 1] = 1e4
    assert torch.allclose(uld_loss(poisoned, teacher, mask=mask).total, masked.total)
    # A sparse teacher's own mask drops a position too.
    logprobs, ids = teacher.log_softmax(-1).topk(3, dim=-1)
    sparse = uld_loss(student, SparseBatch(ids, logprobs, mask))
    assert int(sparse.n_tokens) == 2


def test_uld_gradient_reaches_the_student_and_lowers_the_loss() -> None:
    student = _random_logits(2, 3, 10, seed=6).requires_grad_(True)
    teacher = _random_logits(2, 3, 10, seed=7)
    loss = uld_loss(student, teacher).total
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = student - 0.1 * student.grad
    assert uld_loss(stepped, teacher).total < loss


def test_uld_needs_temperature_one_without_renormalisation() -> None:
    student = _logits_of([0.2, 0.1, 0.7])
    with pytest.raises(ValueError, match="temperature=1"):
        uld_loss(student, _sparse([2, 0], [0.3, 0.5]), temperature=2.0)
    tempered = uld_loss(student, _sparse([2, 0], [0.3, 0.5]), temperature=2.0, tail="renormalize")
    assert math.isfinite(tempered.total.item())


# --- hybrid -----------------------------------------------------------------------------------------


def test_hybrid_with_every_slot_shared_is_forward_kl_with_a_bucket() -> None:
    student = _random_logits(2, 3, 12, seed=8)
    logprobs, ids = _random_logits(2, 3, 12, seed=9).log_softmax(-1).topk(4, dim=-1)
    teacher = SparseBatch(ids, logprobs, torch.ones(2, 3, dtype=torch.bool))
    expected = distill_loss("forward_kl", student, teacher, tail="bucket").total
    assert torch.allclose(hybrid_loss(student, teacher).total, expected)
    flagged = SparseBatch(ids, logprobs, teacher.mask, torch.ones_like(ids, dtype=torch.bool))
    assert torch.allclose(hybrid_loss(student, flagged).total, expected)


def test_hybrid_on_a_hand_computed_example() -> None:
    student = _logits_of([0.4, 0.3, 0.2, 0.1])
    # Slot 0 maps onto student id 0; slots 1 and 2 are teacher tokens the student lacks (ids unused).
    teacher = _sparse([0, 0, 3], [0.5, 0.3, 0.1], in_vocab=[True, False, False])
    kl = 0.5 * math.log(0.5 / 0.4) + 0.5 * math.log(0.5 / 0.6)  # {id 0, rest} on both sides
    uld = abs(0.3 - 0.3) + abs(0.1 - 0.2)  # unshared [0.3, 0.1] vs the student's top-2 outside id 0
    assert hybrid_loss(student, teacher).total.item() == pytest.approx(kl + uld, abs=1e-12)
    # A teacher matching the student on the shared id and on the spread of the rest gives 0.
    matching = _sparse([0, 1, 2], [0.4, 0.3, 0.2], in_vocab=[True, False, False])
    assert hybrid_loss(student, matching).total.item() == pytest.approx(0.0, abs=1e-12)


def test_hybrid_positions_without_shared_slots_have_finite_gradients() -> None:
    student = _random_logits(1, 2, 6, seed=10).requires_grad_(True)
    ids = torch.tensor([[[1, 2], [3, 4]]])
    logprobs = torch.tensor([[[0.6, 0.3], [0.5, 0.2]]], dtype=torch.float64).log()
    in_vocab = torch.tensor([[[False, False], [True, False]]])
    teacher = SparseBatch(ids, logprobs, torch.ones(1, 2, dtype=torch.bool), in_vocab)
    summed = hybrid_loss(student, teacher)
    summed.total.backward()
    assert int(summed.n_tokens) == 2 and summed.total.item() > 0
    assert torch.isfinite(student.grad).all() and student.grad[0, 0].abs().sum() > 0
    # Position 0 has no shared slot: its value is ULD alone.
    first = uld_loss(student[:, :1].detach(), SparseBatch(ids[:, :1], logprobs[:, :1], teacher.mask[:, :1]))
    alone = hybrid_loss(
        student[:, :1].detach(),
        SparseBatch(ids[:, :1], logprobs[:, :1], teacher.mask[:, :1], in_vocab[:, :1]),
    )
    assert alone.total.item() == pytest.approx(first.total.item(), abs=1e-12)


def test_hybrid_and_uld_terms_in_combine_match_the_functions() -> None:
    student = _random_logits(2, 3, 12, seed=11)
    labels = torch.tensor([[1, 2, -100], [3, 4, 5]])
    logprobs, ids = _random_logits(2, 3, 12, seed=12).log_softmax(-1).topk(4, dim=-1)
    in_vocab = torch.tensor([True, True, False, False]).expand_as(ids)
    teacher = SparseBatch(ids, logprobs, torch.ones(2, 3, dtype=torch.bool), in_vocab)
    terms = [LossTerm("ce"), LossTerm("uld", tail="none"), LossTerm("hybrid")]
    combined = combine(terms, student, labels, teacher)
    labelled = labels != -100
    assert torch.allclose(
        combined.parts["uld"], uld_loss(student, teacher, mask=labelled, tail="none").mean()
    )
    assert torch.allclose(combined.parts["hybrid"], hybrid_loss(student, teacher, mask=labelled).mean())
    assert torch.allclose(combined.parts["ce"], cross_entropy(student, labels).mean())
    assert torch.allclose(combined.total, sum(combined.parts.values()))


# --- Fu et al. (2023) switches ------------------------------------------------------------------------


def test_tail_none_is_the_un_renormalised_top_k() -> None:
    student = _logits_of([0.4, 0.2, 0.3, 0.1])
    teacher = _sparse([0, 1], [0.5, 0.3])
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.2)
    assert distill_loss("forward_kl", student, teacher, tail="none").total.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="forward_kl and uld only"):
        LossTerm("rkl", tail="none")


def test_one_hot_fallback_is_cross_entropy_where_no_alignment_exists() -> None:
    student = _random_logits(2, 4, 9, seed=13)
    labels = torch.tensor([[1, 2, 3, -100], [4, 5, 6, 7]])
    logprobs, ids = _random_logits(2, 4, 9, seed=14).log_softmax(-1).topk(3, dim=-1)
    mask = torch.tensor([[True, False, True, False], [False, False, False, False]])
    teacher = SparseBatch(ids, logprobs, mask)
    filled = with_one_hot_fallback(teacher, labels)
    assert filled.mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    term = LossTerm("kl", tail="none", unaligned="one_hot")
    combined = combine([term], student, labels, teacher)
    per_token_ce = -student.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    covered = distill_loss("forward_kl", student, teacher, mask=labels != -100, tail="none").total
    uncovered = per_token_ce[(labels != -100) & ~mask].sum()
    assert int(combined.n_tokens["kl"]) == 7
    assert combined.parts["kl"].item() == pytest.approx(((covered + uncovered) / 7).item())
    assert int(count_tokens([term], labels, teacher)["kl"]) == 7
    assert int(count_tokens([LossTerm("kl")], labels, teacher)["kl"]) == 2


def test_terms_count_only_their_rows() -> None:
    student = _random_logits(3, 3, 9, seed=15)
    labels = torch.tensor([[1, 2, 3], [4, -100, -100], [5, 6, -100]])
    cot_rows = torch.tensor([True, False, True])
    logprobs, ids = _random_logits(3, 3, 9, seed=16).log_softmax(-1).topk(5, dim=-1)
    teacher = SparseBatch(ids, logprobs, torch.ones(3, 3, dtype=torch.bool))
    terms = [
        LossTerm("ce", targets="answer_only"),
        LossTerm("kl", tail="none", top_k=2, targets="cot", unaligned="one_hot"),
    ]
    combined = combine(terms, student, labels, teacher, cot_rows=cot_rows)
    assert int(combined.n_tokens["ce"]) == 1 and int(combined.n_tokens["kl"]) == 5
    assert torch.allclose(combined.parts["ce"], cross_entropy(student[1:2], labels[1:2]).mean())
    top2, _ = keep_top_slots(teacher, 2, labels)
    expected_kl = distill_loss(
        "forward_kl", student, top2, mask=(labels != -100) & cot_rows[:, None], tail="none"
    )
    assert torch.allclose(combined.parts["kl"], expected_kl.mean())
    # Changing the answer-only row's logits moves only the cross-entropy term.
    moved = student.clone()
    moved[1] += _random_logits(3, 9, seed=17)
    again = combine(terms, moved, labels, teacher, cot_rows=cot_rows)
    assert torch.allclose(again.parts["kl"], combined.parts["kl"])
    assert not torch.allclose(again.parts["ce"], combined.parts["ce"])
    with pytest.raises(ValueError, match="cot_rows"):
        combine(terms, student, labels, teacher)


def test_keep_top_slots_keeps_the_most_probable() -> None:
    teacher = _sparse([4, 1, 2, 3], [0.1, 0.4, 0.3, 0.05])
    kept, slots = keep_top_slots(teacher, 2)
    assert kept.ids.flatten().tolist() == [1, 2] and slots.flatten().tolist() == [1, 2]
    # A label the teacher ranks within the k changes nothing; one it lacks is not invented.
    for label in (2, 9):
        kept, slots = keep_top_slots(teacher, 2, torch.tensor([[label]]))
        assert kept.ids.flatten().tolist() == [1, 2] and slots.flatten().tolist() == [1, 2]
    with pytest.raises(ValueError, match="top_k"):
        LossTerm("kl", top_k=0)


def test_top_k_keeps_the_label_the_teacher_ranks_sixth() -> None:
    """top_k=5 keeps the label's slot (the sampled token, ranked 6th) and the 4 most probable others,
    not the 5 most probable: the position trains towards the token the target holds."""
    teacher_ids = [10, 11, 12, 13, 14, 7]
    teacher_probs = [0.30, 0.20, 0.15, 0.10, 0.08, 0.05]
    teacher = _sparse(teacher_ids, teacher_probs)
    labels = torch.tensor([[7]])
    kept, slots = keep_top_slots(teacher, 5, labels)
    assert kept.ids.flatten().tolist() == [10, 11, 12, 13, 7]  # most probable first
    assert slots.flatten().tolist() == [0, 1, 2, 3, 5]
    assert torch.allclose(kept.logprobs.exp().sum(), torch.tensor(0.80, dtype=torch.float64))
    # Hand-computed forward KL (tail none: the kept slots as reported), through `combine`.
    student_probs = [0.01] * 16
    student_probs[7], student_probs[10], student_probs[11], student_probs[14] = 0.25, 0.20, 0.15, 0.24
    student_probs[0] = 1 - sum(student_probs[1:])
    student = _logits_of(student_probs)
    q = dict(enumerate(student_probs))
    expected = sum(p * math.log(p / q[i]) for i, p in zip(teacher_ids, teacher_probs, strict=True) if i != 14)
    term = LossTerm("kl", kind="forward_kl", tail="none", top_k=5, unaligned="one_hot")
    combined = combine([term], student, labels, teacher)
    assert combined.parts["kl"].item() == pytest.approx(expected, rel=1e-9)
    # The old rule (the 5 most probable) would have dropped the label's 0.05 * log(0.05 / 0.25).
    top5 = sum(p * math.log(p / q[i]) for i, p in zip(teacher_ids[:5], teacher_probs[:5], strict=True))
    assert combined.parts["kl"].item() != pytest.approx(top5, rel=1e-3)
    # Every loss term keeps it: reverse KL and JSD see the same 5 slots (here with the rest bucket).
    for kind in ("reverse_kl", "jsd"):
        other = LossTerm(kind, kind=kind, tail="bucket", top_k=5)
        value = combine([other], student, labels, teacher).parts[kind]
        kept_teacher, _ = keep_top_slots(teacher, 5, labels)
        direct = distill_loss(kind, student, kept_teacher, tail="bucket").total
        assert torch.allclose(value, direct)
