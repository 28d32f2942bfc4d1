"""Teacher signals: compact sparse rows, their safetensors store, and batch collation."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mwp.signals import (
    DenseSignal,
    SignalStore,
    SignalStoreError,
    SparseSignal,
    collate_sparse,
)


def _signal(length: int, k: int, seed: int, *, vocab: int = 32128, with_targets: bool = True) -> SparseSignal:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(length, vocab, generator=g) * 3
    targets = torch.randint(0, vocab, (length,), generator=g) if with_targets else None
    signal = DenseSignal(logits).to_sparse(k, target_ids=targets)
    signal.mask[torch.rand(length, generator=g) < 0.3] = False
    return signal


def test_dense_to_sparse_keeps_the_top_k_in_order() -> None:
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    sparse = DenseSignal(logits).to_sparse(4)
    log_probs = logits.log_softmax(-1)
    for position in range(6):
        best = log_probs[position].argsort(descending=True)[:4]
        assert sparse.ids[position].tolist() == best.tolist()
        torch.testing.assert_close(
            sparse.logprobs[position].float(), log_probs[position, best], atol=2e-3, rtol=1e-3
        )
    assert sparse.ids.dtype == torch.int32 and sparse.logprobs.dtype == torch.float32
    assert sparse.mask.all()
    with pytest.raises(ValueError, match="k must be"):
        DenseSignal(logits).to_sparse(51)


def test_sparse_signal_is_compact_and_consistent() -> None:
    signal = SparseSignal(
        ids=torch.tensor([[5, -1, 7], [3, 4, 9]]),
        logprobs=torch.tensor([[-0.1, -2.0, float("-inf")], [-0.5, -1.0, -3.0]], dtype=torch.float64),
        mask=torch.tensor([1, 0]),
    )
    assert signal.ids.dtype == torch.int32 and signal.logprobs.dtype == torch.float32
    assert signal.mask.dtype == torch.bool
    # An unused slot is unused on both sides, whichever side marked it.
    assert signal.ids[0].tolist() == [5, -1, -1]
    assert signal.logprobs[0, 1:].tolist() == [float("-inf"), float("-inf")]
    with pytest.raises(ValueError, match=r"\[L, k\]"):
        SparseSignal(ids=torch.zeros(2, 3), logprobs=torch.zeros(2, 2), mask=torch.ones(2))
    with pytest.raises(ValueError, match="mask"):
        SparseSignal(ids=torch.zeros(2, 3), logprobs=torch.zeros(2, 3), mask=torch.ones(3))
    with pytest.raises(ValueError, match="target_ids"):
        SparseSignal(
            ids=torch.zeros(2, 3), logprobs=torch.zeros(2, 3), mask=torch.ones(2), target_ids=torch.ones(4)
        )


def test_store_round_trip_reads_rows_lazily(tmp_path) -> None:
    rows = [
        _signal(length, k, seed)
        for seed, (length, k) in enumerate([(17, 5), (1, 3), (40, 5), (0, 2), (9, 1)])
    ]
    path = SignalStore.write(
        tmp_path / "signals.safetensors", rows, metadata={"teacher": "smollm2", "coverage": "0.6"}
    )
    store = SignalStore(path)
    assert len(store) == 5 and store.k == 5
    assert store.metadata["teacher"] == "smollm2" and store.metadata["rows"] == "5"
    for index in (2, 0, 4, 3, 1, -1):
        got, want = store[index], rows[index]
        assert len(got) == len(want)
        assert got.ids[:, : want.k].tolist() == want.ids.tolist()
        assert (got.ids[:, want.k :] == -1).all()
        assert torch.equal(got.logprobs[:, : want.k], want.logprobs)
        assert torch.equal(got.mask, want.mask)
        assert torch.equal(got.target_ids, want.target_ids)
    with pytest.raises(IndexError):
        store[5]

    # Plain tensors any safetensors reader understands: no pickles, compact dtypes.
    tensors = load_file(path)
    assert tensors["ids"].dtype == torch.int32 and tensors["logprobs"].dtype == torch.float32
    assert tensors["mask"].dtype == torch.bool
    assert tensors["offsets"].tolist() == [0, 17, 18, 58, 58, 67]
    assert path.stat().st_size < 67 * 5 * 8 + 2000  # ~8 bytes per slot (int32 + float32) and a header

    # DataLoader workers get a picklable handle that reopens the file.
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone[2].ids, store[2].ids)


def test_store_streams_with_a_fixed_k_and_never_clobbers_on_error(tmp_path) -> None:
    path = tmp_path / "signals.safetensors"
    rows = [_signal(12, 3, 1), _signal(5, 2, 2)]
    SignalStore.write(path, iter(rows), k=4)
    before = path.read_bytes()
    assert SignalStore(path).k == 4

    def bad_rows():
        yield _signal(3, 2, 3)
        yield _signal(3, 6, 4)

    with pytest.raises(ValueError, match="row 1 has 6 slots"):
        SignalStore.write(path, bad_rows(), k=4)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signals.safetensors"]
    mixed = [_signal(3, 2, 5), _signal(3, 2, 6, with_targets=False)]
    with pytest.raises(ValueError, match="target_ids"):
        SignalStore.write(path, mixed)
    assert path.read_bytes() == before


def test_store_without_targets_and_empty_store(tmp_path) -> None:
    rows = [_signal(4, 2, 7, with_targets=False)]
    store = SignalStore(SignalStore.write(tmp_path / "a.safetensors", rows))
    assert store[0].target_ids is None
    empty = SignalStore(SignalStore.write(tmp_path / "b.safetensors", []))
    assert len(empty) == 0


def test_store_rejects_foreign_or_broken_files(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(SignalStoreError, match=r"nope\.safetensors"):
        SignalStore(missing)
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(SignalStoreError, match=r"weights\.safetensors: format"):
        SignalStore(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file at all")
    with pytest.raises(SignalStoreError, match=r"garbage\.safetensors"):
        SignalStore(garbage)
    # A well-formed file whose row index disagrees with its positions.
    good = SignalStore.write(tmp_path / "good.safetensors", [_signal(4, 2, 8)])
    tensors = load_file(good)
    tensors["offsets"] = torch.tensor([0, 3], dtype=torch.int64)
    with open(good, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        metadata = json.loads(handle.read(length))["__metadata__"]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata=metadata)
    with pytest.raises(SignalStoreError, match=r"broken\.safetensors: row offsets"):
        SignalStore(broken)


def test_collate_pads_cuts_and_checks_labels() -> None:
    rows = [_signal(6, 3, 9), _signal(3, 5, 10), _signal(9, 2, 11)]
    for row in rows:
        row.mask[:] = True
    batch = collate_sparse(rows, target_len=7)
    assert batch["teacher_ids"].shape == (3, 7, 5)
    assert batch["teacher_logprobs"].shape == (3, 7, 5) and batch["teacher_logprobs"].dtype == torch.float32
    assert batch["teacher_mask"].tolist() == [[True] * 6 + [False], [True] * 3 + [False] * 4, [True] * 7]
    assert (batch["teacher_ids"][1, 3:] == -1).all() and (batch["teacher_ids"][0, :, 3:] == -1).all()
    assert batch["teacher_ids"][2, :, :2].tolist() == rows[2].ids[:7].tolist()

    # Labels as the tokenizer makes them: padded with -100, the cut row ends with EOS (id 1).
    labels = torch.full((3, 7), -100)
    labels[0, :6] = rows[0].target_ids.long()
    labels[1, :3] = rows[1].target_ids.long()
    labels[1, 1] = 5  # this row was tokenized differently at position 1
    labels[2, :6] = rows[2].target_ids[:6].long()
    labels[2, 6] = 1
    checked = collate_sparse(rows, target_len=7, labels=labels)["teacher_mask"]
    assert checked[0].tolist() == [True] * 6 + [False]
    assert checked[1].tolist() == [True, False, True] + [False] * 4
    assert checked[2].tolist() == [True] * 6 + [False]
    with pytest.raises(ValueError, match="labels"):
        collate_sparse(rows, target_len=7, labels=labels[:, :5])
    assert collate_sparse(rows, target_len=7, k=8)["teacher_ids"].shape == (3, 7, 8)
    with pytest.raises(ValueError, match="k=2"):
        collate_sparse(rows, target_len=7, k=2)


def test_empty_signal_trains_on_cross_entropy_only() -> None:
    signal = SparseSignal.empty(4, target_ids=torch.tensor([3, 4, 5, 1]))
    assert not signal.mask.any() and (signal.ids == -1).all()
    batch = collate_sparse([signal], target_len=4)
    assert not batch["teacher_mask"].any()
