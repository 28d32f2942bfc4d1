"""Distillation losses: analytic identities, sparse vs dense, tails, and gradient accumulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from mwp.config.schema.loss_terms import KINDS, TAILS, LossTerm
from mwp.signals import DenseSignal, SparseBatch, collate_sparse
from mwp.student.losses import (
    TAIL_LOGPROB_FLOOR,
    combine,
    count_tokens,
    cross_entropy,
    distill_loss,
    forward_kl,
    gathered_log_softmax,
    generalized_jsd,
    reverse_kl,
    token_mean,
)

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _logits(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _full_sparse(teacher_logits: torch.Tensor, seed: int = 0) -> SparseBatch:
    """All V ids of a dense teacher, in a shuffled slot order."""
    g = torch.Generator().manual_seed(seed)
    b, length, v = teacher_logits.shape
    ids = torch.stack([torch.randperm(v, generator=g) for _ in range(b * length)]).view(b, length, v)
    logprobs = teacher_logits.log_softmax(-1).gather(-1, ids)
    return SparseBatch(ids, logprobs, torch.ones(b, length, dtype=torch.bool))


def _top_k(teacher_logits: torch.Tensor, k: int) -> SparseBatch:
    logprobs, ids = teacher_logits.log_softmax(-1).topk(k, dim=-1)
    return SparseBatch(ids, logprobs, torch.ones(ids.shape[:2], dtype=torch.bool))


def _kl_numpy(p: np.ndarray, q: np.ndarray) -> float:
    keep = p > 0
    return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep]))))


# --- analytic identities ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_identical_distributions_give_zero(kind: str) -> None:
    logits = _logits(2, 5, 11, seed=1)
    assert distill_loss(kind, logits, logits.clone()).total.item() == pytest.approx(0.0, abs=1e-12)
    sparse = _top_k(logits, 4)
    # Bucket: both sides coarsened to (top-4, rest) identically.
    assert distill_loss(kind, logits, sparse, tail="bucket").total.item() == pytest.approx(0.0, abs=1e-6)
    # Renormalize: the teacher is p / Z on the top-4, so the student's mass outside it costs.
    renormalized = distill_loss(kind, logits, sparse, tail="renormalize").total.item()
    if kind == "forward_kl":
        top_mass = sparse.logprobs.exp().sum(-1)
        assert renormalized == pytest.approx(-top_mass.log().sum().item(), rel=1e-6)
    else:
        assert renormalized > 0.01


def test_dense_forward_kl_equals_torch_kl_div_and_respects_mask() -> None:
    student, teacher = _logits(3, 4, 9, seed=2), _logits(3, 4, 9, seed=3)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    result = forward_kl(student, teacher, mask=mask)
    # F.kl_div(input, target) = sum target * (log target - input): input is the student.
    per_position = F.kl_div(
        student.log_softmax(-1), teacher.log_softmax(-1), reduction="none", log_target=True
    )
    expected = per_position.sum(-1)[mask].sum()
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-12)
    assert result.n_tokens.item() == 6
    reverse = reverse_kl(student, teacher, mask=mask)
    per_position = F.kl_div(
        teacher.log_softmax(-1), student.log_softmax(-1), reduction="none", log_target=True
    )
    assert reverse.total.item() == pytest.approx(per_position.sum(-1)[mask].sum().item(), rel=1e-12)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("tail", TAILS)
def test_sparse_with_every_id_equals_dense(kind: str, tail: str) -> None:
    student, teacher = _logits(2, 6, 13, seed=4), _logits(2, 6, 13, seed=5)
    dense = distill_loss(kind, student, teacher, beta=0.3).total.item()
    sparse = distill_loss(kind, student, _full_sparse(teacher), beta=0.3, tail=tail).total.item()
    # The student's rest mass is floored near 1e-7 per position, a ~1e-6 absolute difference at most.
    assert sparse == pytest.approx(dense, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_sparse_with_every_id_equals_dense_gradients(kind: str) -> None:
    teacher = _logits(2, 3, 8, seed=6)
    grads = []
    for target in (teacher, _full_sparse(teacher, seed=1)):
        student = _logits(2, 3, 8, seed=7).requires_grad_()
        distill_loss(kind, student, target, beta=0.7).total.backward()
        grads.append(student.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_jsd_edges_follow_trl_convention() -> None:
    student, teacher = _logits(2, 4, 10, seed=8), _logits(2, 4, 10, seed=9)
    fkl = forward_kl(student, teacher).total.item()
    rkl = reverse_kl(student, teacher).total.item()
    assert generalized_jsd(student, teacher, beta=0.0).total.item() == pytest.approx(fkl, rel=1e-12)
    assert generalized_jsd(student, teacher, beta=1.0).total.item() == pytest.approx(rkl, rel=1e-12)
    # The formula itself vanishes at the edges; divided by the vanishing weight it tends to the KLs.
    eps = 1e-5
    assert generalized_jsd(student, teacher, beta=eps).total.item() / eps == pytest.approx(fkl, rel=1e-3)
    assert generalized_jsd(student, teacher, beta=1 - eps).total.item() / eps == pytest.approx(rkl, rel=1e-3)


def test_jsd_half_is_the_symmetric_jensen_shannon_divergence() -> None:
    student, teacher = _logits(1, 3, 6, seed=10), _logits(1, 3, 6, seed=11)
    p = teacher.softmax(-1).numpy()[0]
    q = student.softmax(-1).numpy()[0]
    expected = 0.0
    for pi, qi in zip(p, q, strict=True):
        m = (pi + qi) / 2
        expected += 0.5 * _kl_numpy(pi, m) + 0.5 * _kl_numpy(qi, m)
    assert generalized_jsd(student, teacher, beta=0.5).total.item() == pytest.approx(expected, rel=1e-10)
    assert generalized_jsd(teacher, student, beta=0.5).total.item() == pytest.approx(expected, rel=1e-10)
    assert expected <= 3 * math.log(2)


def test_temperature_scales_both_sides() -> None:
    student, teacher = _logits(2, 3, 7, seed=12), _logits(2, 3, 7, seed=13)
    t = 2.5
    value = forward_kl(student, teacher, temperature=t).total.item()
    expected = F.kl_div(
        (student / t).log_softmax(-1), (teacher / t).log_softmax(-1), reduction="sum", log_target=True
    )
    assert value == pytest.approx(expected.item(), rel=1e-12)
    assert value < forward_kl(student, teacher).total.item()  # softer distributions are closer
    assert forward_kl(student, teacher, temperature=1e4).total.item() < 1e-6
    # Sparse, renormalized: the top-k is tempered then renormalised, exactly as the dense top-k would be.
    top = _top_k(teacher, 3)
    sparse = forward_kl(student, top, temperature=t, tail="renormalize").total.item()
    p = (top.logprobs / t).softmax(-1)
    q = (student / t).log_softmax(-1).gather(-1, top.ids)
    assert sparse == pytest.approx((p * (p.log() - q)).sum().item(), rel=1e-10)
    with pytest.raises(ValueError, match="bucket"):
        forward_kl(student, top, temperature=t, tail="bucket")


def test_tail_bucket_and_renormalize_on_a_hand_computed_example() -> None:
    # Vocabulary of 3; the teacher reports its top-2 (0.6, 0.3), so 0.1 is missing.
    teacher_p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    student_q = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    student = student_q.log().view(1, 1, 3)
    top2 = SparseBatch(
        torch.tensor([[[0, 1]]]), teacher_p[:2].log().view(1, 1, 2), torch.ones(1, 1, dtype=torch.bool)
    )
    ln = math.log
    bucket_fkl = 0.6 * ln(0.6 / 0.5) + 0.3 * ln(0.3 / 0.2) + 0.1 * ln(0.1 / 0.3)
    renorm_fkl = (2 / 3) * ln((2 / 3) / 0.5) + (1 / 3) * ln((1 / 3) / 0.2)
    bucket_rkl = 0.5 * ln(0.5 / 0.6) + 0.2 * ln(0.2 / 0.3) + 0.3 * ln(0.3 / 0.1)
    renorm_rkl = 0.5 * ln(0.5 / (2 / 3)) + 0.2 * ln(0.2 / (1 / 3)) + 0.3 * (ln(0.3) - TAIL_LOGPROB_FLOOR)
    assert forward_kl(student, top2, tail="bucket").total.item() == pytest.approx(bucket_fkl, rel=1e-9)
    assert forward_kl(student, top2, tail="renormalize").total.item() == pytest.approx(renorm_fkl, rel=1e-9)
    assert reverse_kl(student, top2, tail="bucket").total.item() == pytest.approx(bucket_rkl, rel=1e-9)
    assert reverse_kl(student, top2, tail="renormalize").total.item() == pytest.approx(renorm_rkl, rel=1e-9)
    # With one token missing, the bucket is that token: the dense loss, exactly.
    dense = teacher_p.log().view(1, 1, 3)
    for kind in DIVERGENCES:
        assert distill_loss(kind, student, top2, tail="bucket").total.item() == pytest.approx(
            distill_loss(kind, student, dense).total.item(), rel=1e-9
        )


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_bucket_is_a_lower_bound_of_the_dense_divergence(kind: str) -> None:
    # Merging outcomes never increases an f-divergence (data processing inequality).
    student, teacher = _logits(4, 8, 40, seed=14), _logits(4, 8, 40, seed=15, scale=3.0)
    dense = distill_loss(kind, student, teacher)
    for k in (1, 5, 20):
        bucket = distill_loss(kind, student, _top_k(teacher, k), tail="bucket")
        assert 0 <= bucket.total.item() <= dense.total.item() + 1e-9


def test_padding_slots_and_masked_positions_are_inert() -> None:
    teacher, base = _logits(2, 5, 12, seed=16), _logits(2, 5, 12, seed=17)
    top = _top_k(teacher, 3)
    # The same target with two extra unused slots and garbage at masked-out positions.
    ids = torch.cat([top.ids, torch.full((2, 5, 2), -1)], dim=-1)
    logprobs = torch.cat([top.logprobs, torch.full((2, 5, 2), float("-inf"), dtype=torch.float64)], dim=-1)
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 0, 1, 1, 0]], dtype=torch.bool)
    ids[~mask] = -1
    logprobs[~mask] = float("-inf")
    padded = SparseBatch(ids, logprobs, mask)
    plain = SparseBatch(top.ids, top.logprobs, mask)
    for kind in DIVERGENCES:
        for tail in TAILS:
            grads = []
            for target in (plain, padded):
                student = base.clone().requires_grad_()
                result = distill_loss(kind, student, target, tail=tail)
                result.total.backward()
                assert result.n_tokens.item() == 7
                grads.append(student.grad)
            assert torch.isfinite(grads[1]).all()
            torch.testing.assert_close(grads[1], grads[0])
            assert grads[1][~mask].abs().max().item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_gathered_log_softmax_values_and_gradient(temperature: float) -> None:
    logits = _logits(2, 3, 9, seed=18).requires_grad_()
    index = torch.randint(0, 9, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    expected = (logits / temperature).log_softmax(-1).gather(-1, index)
    torch.testing.assert_close(gathered_log_softmax(logits, index, temperature), expected)
    assert torch.autograd.gradcheck(lambda x: gathered_log_softmax(x, index, temperature), (logits,))
    # A masked-out vocabulary entry (-inf logit) as the first gathered id: still exact elsewhere.
    masked = _logits(2, 3, 9, seed=18)
    masked[..., 3] = float("-inf")
    first_masked = torch.cat([torch.full((2, 3, 1), 3), index], dim=-1)
    got = gathered_log_softmax(masked, first_masked, temperature)
    assert (got[..., 0] == float("-inf")).all()
    torch.testing.assert_close(got[..., 1:], (masked / temperature).log_softmax(-1).gather(-1, index))


def test_token_mean_zero_tokens_and_cross_entropy() -> None:
    logits = _logits(2, 4, 6, seed=19)
    labels = torch.tensor([[1, 2, -100, -100], [5, -100, 0, 3]])
    summed = cross_entropy(logits, labels)
    assert summed.n_tokens.item() == 5
    expected = F.cross_entropy(logits.view(-1, 6), labels.view(-1), ignore_index=-100)
    assert summed.mean().item() == pytest.approx(expected.item(), rel=1e-12)
    empty = cross_entropy(logits, torch.full_like(labels, -100))
    assert empty.mean().item() == 0.0
    assert token_mean(torch.tensor(6.0), 3, global_n_tokens=12).item() == 0.5


# --- configured terms --------------------------------------------------------------------------------


def test_loss_term_checks_and_help() -> None:
    assert LossTerm("kl").kind == "forward_kl"
    assert LossTerm("ce").kind == "ce"
    assert LossTerm("distill", kind="jsd", beta=0.1).kind == "jsd"
    bad = [
        ({"name": "what"}, "kind"),
        ({"name": "ce", "weight": -1.0}, "weight"),
        ({"name": "kl", "weight": float("nan")}, "weight"),
        ({"name": "kl", "temperature": 0.0}, "temperature"),
        ({"name": "ce", "temperature": 2.0}, "temperature"),
        ({"name": "j", "kind": "jsd", "beta": 1.5}, "beta"),
        ({"name": "kl", "tail": "drop"}, "tail"),
    ]
    for entry, key in bad:
        with pytest.raises(ValueError, match=rf"loss\.terms\.{entry['name']}\.{key}"):
            LossTerm.from_config(entry)
    with pytest.raises(ValueError, match="unknown keys"):
        LossTerm.from_config({"name": "kl", "temprature": 2.0})
    text = LossTerm.help()
    for name in ("name", "weight", "kind", "temperature", "beta", "tail", "targets", "unaligned"):
        assert f"{name}:" in text
    assert set(KINDS) == {"ce", "forward_kl", "reverse_kl", "jsd", "uld", "hybrid"}


def test_combine_is_the_weighted_sum_of_the_functions_and_fusion_is_exact() -> None:
    b, length, v = 3, 5, 30
    teacher = _logits(b, length, v, seed=20)
    labels = torch.randint(0, v, (b, length), generator=torch.Generator().manual_seed(1))
    labels[0, 3:] = -100
    labels[2, 1:] = -100
    top = _top_k(teacher, 4)
    top = SparseBatch(top.ids, top.logprobs, torch.tensor([[1, 0, 1, 1, 1]] * b, dtype=torch.bool))
    terms = [
        LossTerm("ce", weight=0.5),
        LossTerm("kl", weight=2.0),
        LossTerm("jsd", kind="jsd", beta=0.2, temperature=2.0, tail="renormalize"),
    ]
    student = _logits(b, length, v, seed=21).requires_grad_()
    combined = combine(terms, student, labels, top)
    combined.total.backward()
    fused_grad = student.grad.clone()

    reference = _logits(b, length, v, seed=21).requires_grad_()
    labelled = labels != -100
    parts = {
        "ce": cross_entropy(reference, labels).mean(),
        "kl": forward_kl(reference, top, mask=labelled).mean(),
        "jsd": generalized_jsd(
            reference, top, beta=0.2, temperature=2.0, tail="renormalize", mask=labelled
        ).mean(),
    }
    total = 0.5 * parts["ce"] + 2.0 * parts["kl"] + parts["jsd"]
    total.backward()
    assert combined.total.item() == pytest.approx(total.item(), rel=1e-10)
    for name, value in parts.items():
        assert combined.parts[name].item() == pytest.approx(value.item(), rel=1e-10)
    torch.testing.assert_close(fused_grad, reference.grad)
    assert combined.n_tokens["ce"].item() == int(labelled.sum())
    assert combined.n_tokens["kl"].item() == int((labelled & top.mask).sum())
    assert count_tokens(terms, labels, top) == combined.n_tokens


def test_combine_cross_entropy_alone_and_with_a_dense_teacher() -> None:
    labels = torch.tensor([[3, 7, 1, -100], [2, 2, -100, -100]])
    teacher = _logits(2, 4, 9, seed=23)
    grads, values = [], []
    for teacher_arg in (None, teacher):
        student = _logits(2, 4, 9, seed=24).requires_grad_()
        terms = [LossTerm("ce")] if teacher_arg is None else [LossTerm("ce"), LossTerm("kl", weight=0.3)]
        combined = combine(terms, student, labels, teacher_arg)
        combined.total.backward()
        grads.append(student.grad)
        values.append(combined)
    reference = _logits(2, 4, 9, seed=24).requires_grad_()
    ce = F.cross_entropy(reference.view(-1, 9), labels.view(-1), ignore_index=-100)
    ce.backward(retain_graph=True)
    assert values[0].total.item() == pytest.approx(ce.item(), rel=1e-12)
    torch.testing.assert_close(grads[0], reference.grad)
    reference.grad = None
    kl = forward_kl(reference, teacher, mask=labels != -100).mean()
    (ce + 0.3 * kl).backward()
    assert values[1].parts["kl"].item() == pytest.approx(kl.item(), rel=1e-12)
    torch.testing.assert_close(grads[1], reference.grad)


def test_temperature_squared_scales_a_distillation_term_by_exactly_t_squared() -> None:
    labels = torch.tensor([[3, 7, 1, -100], [2, 2, -100, -100]])
    teacher = _logits(2, 4, 9, seed=25)
    sparse = _top_k(teacher, 3)
    for signal, tail in ((teacher, "bucket"), (sparse, "renormalize")):
        values, grads = [], []
        for scaled in (False, True):
            student = _logits(2, 4, 9, seed=26).requires_grad_()
            term = LossTerm("kl", temperature=2.0, tail=tail, scale_by_temperature_squared=scaled)
            combined = combine([term], student, labels, signal)
            combined.total.backward()
            values.append(combined)
            grads.append(student.grad)
        plain, scaled = values
        assert scaled.total.item() == 4 * plain.total.item()
        torch.testing.assert_close(grads[1], 4 * grads[0])
        # Logged as the divergence itself, like the weight it is not part of the term's value.
        assert scaled.parts["kl"].item() == plain.parts["kl"].item()
    # At T = 1 the flag changes nothing.
    student = _logits(2, 4, 9, seed=26)
    at_one = [
        combine([LossTerm("kl", scale_by_temperature_squared=s)], student, labels, teacher).total
        for s in (False, True)
    ]
    assert at_one[0].item() == at_one[1].item()
    with pytest.raises(ValueError, match=r"loss\.terms\.ce\.scale_by_temperature_squared"):
        LossTerm("ce", scale_by_temperature_squared=True)
    assert "scale_by_temperature_squared" in LossTerm.help()


def test_combine_rejects_bad_setups() -> None:
    logits = _logits(1, 2, 5, seed=22)
    labels = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="need a teacher"):
        combine([LossTerm("ce"), LossTerm("kl")], logits, labels)
    with pytest.raises(ValueError, match="unique"):
        combine([LossTerm("ce"), LossTerm("ce")], logits, labels)
    with pytest.raises(ValueError, match="no count"):
        combine([LossTerm("ce")], logits, labels, global_n_tokens={"kl": 3})
    with pytest.raises(ValueError, match="empty"):
        combine([], logits, labels)


# --- gradient accumulation with a real (tiny) model ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_t5(flan_t5_dir):
    config = T5Config.from_pretrained(flan_t5_dir)
    for key, value in {
        "d_model": 32,
        "d_ff": 64,
        "d_kv": 16,
        "num_heads": 2,
        "num_layers": 1,
        "num_decoder_layers": 1,
        "dropout_rate": 0.0,
    }.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    student = T5ForConditionalGeneration(config).eval()
    torch.manual_seed(1)
    teacher = T5ForConditionalGeneration(config).eval()
    return student, teacher, AutoTokenizer.from_pretrained(flan_t5_dir)


def test_accumulated_micro_batches_match_one_batch(tiny_t5, data_dir) -> None:
    student, teacher, tokenizer = tiny_t5
    with open(data_dir / "gsm8k" / "train.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(4)]
    # Uneven target lengths: micro-batches carry very different token counts.
    targets = [rows[0]["answer"], "72", rows[2]["answer"][:40], rows[3]["answer"]]
    sources = [r["question"] for r in rows]

    def batch(indices: list[int]) -> dict[str, torch.Tensor]:
        enc = tokenizer([sources[i] for i in indices], padding=True, return_tensors="pt")
        tgt = tokenizer([targets[i] for i in indices], padding=True, return_tensors="pt")
        labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
        with torch.no_grad():
            teacher_logits = teacher(**enc, labels=labels).logits
        signals = []
        for row, length in enumerate(tgt["attention_mask"].sum(-1).tolist()):
            signal = DenseSignal(teacher_logits[row, :length]).to_sparse(5, target_ids=labels[row, :length])
            # Every other position without a teacher distribution, as after cross-tokenizer alignment.
            signal.mask[1::2] = False
            signals.append(signal)
        sparse = collate_sparse(signals, labels.shape[1], labels=labels)
        return {**enc, "labels": labels, **sparse}

    terms = [
        LossTerm("ce"),
        LossTerm("kl", weight=0.5),
        LossTerm("jsd", kind="jsd", temperature=2.0, tail="renormalize"),
    ]

    def step(
        parts: list[dict[str, torch.Tensor]], global_counts: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        student.zero_grad()
        for part in parts:
            logits = student(
                input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"]
            ).logits
            loss = combine(
                terms, logits, part["labels"], SparseBatch.from_batch(part), global_n_tokens=global_counts
            )
            loss.total.backward()
        return {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}

    full = batch([0, 1, 2, 3])
    micro = [batch([0, 1]), batch([2, 3])]
    per_micro = [count_tokens(terms, m["labels"], SparseBatch.from_batch(m)) for m in micro]
    assert per_micro[0]["ce"] != per_micro[1]["ce"]
    global_counts = {name: per_micro[0][name] + per_micro[1][name] for name in per_micro[0]}
    assert global_counts == count_tokens(terms, full["labels"], SparseBatch.from_batch(full))

    one_batch = step([full], None)
    accumulated = step(micro, global_counts)
    assert one_batch.keys() == accumulated.keys()
    for name in one_batch:
        torch.testing.assert_close(accumulated[name], one_batch[name], rtol=1e-4, atol=1e-7)

    # Averaging per-micro-batch means instead would be wrong here, so the check above has teeth.
    naive = step(micro, None)
    differs = [not torch.allclose(naive[n] / 2, one_batch[n], rtol=1e-3, atol=1e-7) for n in one_batch]
    assert any(differs)
