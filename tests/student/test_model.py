from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mwp.student.model import build_student

TINY = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}


def test_offline_fallback_builds_flan_t5_small_architecture(flan_t5_dir: Path) -> None:
    bundle = build_student("google/flan-t5-small", fallback_config=flan_t5_dir)
    assert not bundle.pretrained
    cfg = bundle.model.config
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.vocab_size) == (512, 8, 6, 32128)
    assert len(bundle.tokenizer) == 32100


def test_size_overrides_shrink_the_random_init(flan_t5_dir: Path) -> None:
    bundle = build_student("google/flan-t5-small", pretrained="never", fallback_config=flan_t5_dir, size=TINY)
    assert bundle.model.config.d_model == 32
    assert sum(p.numel() for p in bundle.model.parameters()) < 2_000_000


def test_saved_checkpoint_loads_with_from_pretrained(flan_t5_dir: Path, tmp_path: Path) -> None:
    made = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=3)
    made.model.save_pretrained(tmp_path)
    made.tokenizer.save_pretrained(tmp_path)
    loaded = build_student(str(tmp_path), pretrained="required")
    assert loaded.pretrained and loaded.source == str(tmp_path)
    for (name, a), (_, b) in zip(
        made.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_required_weights_missing_is_a_clear_error(flan_t5_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"student\.pretrained=required"):
        build_student(str(tmp_path / "nowhere"), pretrained="required", fallback_config=flan_t5_dir)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pretrained": "sometimes"}, "student.pretrained"),
        ({"pretrained": "never", "size": {"d_modle": 8}}, "student.size"),
        ({"pretrained": "auto", "size": {"d_model": 8}}, "pretrained=never"),
    ],
)
def test_bad_student_settings_name_the_key(flan_t5_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_student("google/flan-t5-small", fallback_config=flan_t5_dir, **kwargs)


def test_random_init_starts_near_uniform_loss(flan_t5_dir: Path) -> None:
    bundle = build_student("x", pretrained="never", fallback_config=flan_t5_dir, size=TINY, seed=0)
    tok = bundle.tokenizer
    enc = tok(["Q: Tom has 3 apples and buys 4 more. How many apples? A:"], return_tensors="pt")
    labels = tok(["3 + 4 = 7. The answer is 7."], return_tensors="pt").input_ids
    loss = bundle.model(**enc, labels=labels).loss.item()
    uniform = torch.log(torch.tensor(float(bundle.model.config.vocab_size))).item()
    assert abs(loss - uniform) < 0.5 * uniform, (loss, uniform)
