"""Unshared teacher slots (`in_vocab` False): kept by alignment, stored, collated, read by `hybrid`.

Real tokenizers: SmolLM2 (from its GGUF) as the teacher, Flan-T5 as the student. The teacher's
tokens are SmolLM2's real tokenization of the text; its top-k adds, at every token, one alternative
Flan-T5 spells (" the") and two it cannot (a newline and " {", neither in Flan-T5's vocabulary).
"""

from __future__ import annotations

import math

import pytest
import torch

from mwp.config.schema.loss_terms import LossTerm
from mwp.data.artifact import TokenLogprobs
from mwp.signals import SignalStore, SparseBatch, collate_sparse
from mwp.signals.alignment import SpanAligner
from mwp.signals.types import IN_VOCAB_KEY, UNSHARED_ID
from mwp.student.losses import combine, distill_loss, hybrid_loss
from tests.signals import test_alignment as shared

smollm2_tokenizer = shared.smollm2_tokenizer
t5_tokenizer = shared.t5_tokenizer

TEXT = "Tom has 48 marbles and gives 12 away."
SHARED_ALT, UNSHARED_ALTS = ("Ġthe", -2.5), (("Ċ", -1.5), ("Ġ{", -3.0))


def teacher_of(tokenizer, text: str) -> TokenLogprobs:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    alternatives = [SHARED_ALT, *UNSHARED_ALTS]
    return TokenLogprobs(
        tokens=tokens,
        logprobs=[-0.3] * len(tokens),
        top_tokens=[[t, *(a for a, _ in alternatives)] for t in tokens],
        top_logprobs=[[-0.3, *(lp for _, lp in alternatives)] for _ in tokens],
    )


@pytest.fixture(scope="module")
def aligned(smollm2_tokenizer, t5_tokenizer):
    vocab = smollm2_tokenizer.get_vocab()
    assert all(token in vocab for token, _ in (SHARED_ALT, *UNSHARED_ALTS))  # real teacher tokens
    return SpanAligner(t5_tokenizer).align(teacher_of(smollm2_tokenizer, TEXT), TEXT)


def test_alignment_keeps_unshared_alternatives_as_marked_placeholder_slots(aligned, t5_tokenizer) -> None:
    signal = aligned.signal
    assert signal.in_vocab is not None and signal.in_vocab.shape == signal.ids.shape
    valid = torch.isfinite(signal.logprobs)
    unshared = valid & ~signal.in_vocab
    # Every span's first student position has the two unshared alternatives; later span positions
    # carry only their certain target.
    first_positions = sorted({students[0] for _, students in aligned.spans})
    assert first_positions and all(int(unshared[s].sum()) == 2 for s in first_positions)
    assert bool((signal.ids[unshared] == UNSHARED_ID).all())
    assert sorted(signal.logprobs[unshared].unique().tolist()) == [-3.0, -1.5]
    # A shared slot is a real student token: the target and " the" -> "▁the".
    the_id = t5_tokenizer.convert_tokens_to_ids("▁the")
    s = first_positions[1]
    shared_ids = signal.ids[s][signal.in_vocab[s]].tolist()
    assert shared_ids[:1] == [int(signal.target_ids[s])] and the_id in shared_ids
    # Unused padding slots are never marked shared.
    assert not bool((signal.in_vocab & ~valid).any())


def test_unshared_slots_survive_the_store_and_the_collator(aligned, tmp_path) -> None:
    path = SignalStore.write(tmp_path / "s.safetensors", [aligned.signal, aligned.signal])
    back = SignalStore(path)[1]
    assert back.in_vocab is not None and torch.equal(back.in_vocab, aligned.signal.in_vocab)
    length = len(aligned.signal)
    labels = aligned.signal.target_ids[None].long()
    batch = collate_sparse([back], length, labels=labels, k=8)
    assert batch[IN_VOCAB_KEY].shape == (1, length, 8)
    assert torch.equal(batch[IN_VOCAB_KEY][0, :, : back.k], back.in_vocab)
    # A signal without marks beside one with them: its valid slots count as shared.
    plain = type(back)(ids=back.ids, logprobs=back.logprobs, mask=back.mask, target_ids=back.target_ids)
    mixed = collate_sparse([back, plain], length, k=8)[IN_VOCAB_KEY]
    assert torch.equal(mixed[1, :, : back.k], back.ids >= 0)


def test_hybrid_differs_from_forward_kl_by_the_uld_of_the_unshared_slots(aligned) -> None:
    signal = aligned.signal
    length, k = len(signal), signal.k
    labels = signal.target_ids[None].long()
    batch = SparseBatch.from_batch(collate_sparse([signal], length, labels=labels))
    assert batch.in_vocab is not None
    torch.manual_seed(0)
    vocab = 32128
    logits = torch.randn(1, length, vocab, dtype=torch.float64) * 3

    terms = [LossTerm(name="kl", kind="forward_kl"), LossTerm(name="hybrid", kind="hybrid")]
    parts = combine(terms, logits, labels, batch).parts
    assert parts["hybrid"].item() > parts["kl"].item() + 1e-3

    # By hand: forward KL over the shared ids plus one rest outcome (the unshared mass is in the
    # teacher's rest), and hybrid = that KL + sum_i |p_u(i) - q_(i)| with q_(i) the student's
    # largest probabilities outside the shared ids.
    probs = logits.softmax(-1)[0]
    kl_sum = uld_sum = 0.0
    covered = 0
    for s in range(length):
        if not bool(batch.mask[0, s]) or not bool(torch.isfinite(batch.logprobs[0, s]).any()):
            continue
        covered += 1
        slot_p = batch.logprobs[0, s].double().exp()
        shared_slots = batch.in_vocab[0, s] & (slot_p > 0)
        unshared_p = sorted(slot_p[~batch.in_vocab[0, s] & (slot_p > 0)].tolist(), reverse=True)
        ids = batch.ids[0, s][shared_slots].long()
        p, q = slot_p[shared_slots], probs[s, ids]
        kl = float((p * (p / q).log()).sum())
        rest_p, rest_q = 1 - float(p.sum()), 1 - float(q.sum())
        if rest_p > 0:  # a certain target (a later span position) leaves no rest
            kl += rest_p * math.log(rest_p / rest_q)
        outside = probs[s].clone()
        outside[ids] = 0
        top_q = outside.topk(len(unshared_p)).values.tolist()
        kl_sum += kl
        uld_sum += sum(abs(a - b) for a, b in zip(unshared_p, top_q, strict=True))
    assert covered == int(batch.mask.sum()) and covered > 5 and k >= 4
    assert parts["kl"].item() == pytest.approx(kl_sum / covered, rel=1e-9)
    assert parts["hybrid"].item() == pytest.approx((kl_sum + uld_sum) / covered, rel=1e-9)

    # Forward KL ignores the unshared slots (same value with them removed); hybrid with every
    # slot marked shared would no longer be hybrid, and the marks are what make the difference.
    removed = batch.shared_only()
    assert distill_loss("forward_kl", logits, removed).total.item() == pytest.approx(kl_sum, rel=1e-9)
    assert hybrid_loss(logits, removed).total.item() == pytest.approx(kl_sum, rel=1e-9)
