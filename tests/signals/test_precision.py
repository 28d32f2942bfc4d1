"""An identical student and teacher give (almost) zero KL through the store, not only in memory."""

from __future__ import annotations

import torch

from mwp.signals import DenseSignal, SignalStore, SparseBatch, collate_sparse
from mwp.student.losses import forward_kl


def _through_store(tmp_path, logits: torch.Tensor, k: int) -> SparseBatch:
    """Top-k of each row's own distribution, written to a store, read back and collated."""
    rows = [DenseSignal(row).to_sparse(k, target_ids=row.argmax(-1)) for row in logits]
    store = SignalStore(SignalStore.write(tmp_path / "signals.safetensors", rows))
    labels = logits.argmax(-1)
    return SparseBatch.from_batch(
        collate_sparse([store[i] for i in range(len(store))], logits.shape[1], labels=labels)
    )


def test_full_vocabulary_signal_of_a_tiny_model_round_trips_to_zero_kl(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(40, 16), torch.nn.Tanh(), torch.nn.Linear(16, 64))
    with torch.no_grad():
        logits = model(torch.randint(0, 40, (3, 11))) * 4
    teacher = _through_store(tmp_path, logits, k=logits.shape[-1])
    assert teacher.logprobs.dtype == torch.float32 and teacher.mask.all()
    kl = forward_kl(logits, teacher, tail="bucket").mean()
    # float16 logprobs left ~2e-4 here.
    assert abs(float(kl)) < 1e-6


def test_peaked_top_k_with_the_bucket_tail_round_trips_to_zero_kl(tmp_path) -> None:
    # A confident teacher over a Flan-T5-sized vocabulary, kept as its top 20 plus the rest bucket:
    # the bucket coarsens teacher and student alike, so identical models give zero.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 24, 32128, generator=g)
    logits[..., 7] += 14.0
    teacher = _through_store(tmp_path, logits, k=20)
    kl = forward_kl(logits, teacher, tail="bucket").mean()
    assert abs(float(kl)) < 1e-6
