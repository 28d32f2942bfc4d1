"""End to end: distill → train → evaluate, through the composed Hydra config and the real CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mwp.config import ConfigError
from mwp.pipeline import run
from tests.helpers import CONF_DIR, compose_config, typed_config

pytestmark = pytest.mark.slow
# GPT-2's pre-tokenisation (ASCII): the chunks its BPE merges within.
GPT2_PIECES = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def test_demo_experiment_in_debug_mode_end_to_end(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=demo", "debug=default"], run_dir=tmp_path)
    summary = run(cfg)
    assert summary["distill"]["problems_seen"] == cfg.dataset.limit
    assert summary["train"]["steps"] == cfg.trainer.max_steps
    assert (tmp_path / "student" / "config.json").exists()
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [(r["dataset"], r["split"]) for r in results] == [(s.name, s.split) for s in cfg.dataset.eval_sets]
    for r in results:
        preds = (
            (tmp_path / "eval" / f"predictions_{r['dataset']}_{r['split']}.jsonl").read_text().splitlines()
        )
        assert len(preds) == r["size"] == cfg.evaluation.limit
        # flexible extraction falls back to the last number, so it scores every strict hit too
        assert 0.0 <= r["strict_acc"] <= r["flexible_acc"] <= 1.0
    (metrics_file,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    metrics = list(csv.DictReader(metrics_file.open()))
    assert any(row.get("train/loss") for row in metrics)
    assert any(row.get("val/acc") for row in metrics)
    assert (tmp_path / "config.yaml").exists()


def test_a_run_resumes_in_its_own_folder_and_never_overwrites_another(tmp_path: Path) -> None:
    first = compose_config(["experiment=demo", "debug=default", "stage=pipeline"], run_dir=tmp_path)
    run(first)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    # last.ckpt holds the final step (4), though the save interval (50) never came round.
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    distilled = (tmp_path / "distill" / "distilled.jsonl").read_bytes()

    # A new run pointed at the same folder is refused before it touches anything.
    again = compose_config(["experiment=demo", "debug=default"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a run.*stage\.resume="):
        run(again)

    more = compose_config(
        ["experiment=demo", "debug=default", f"stage.resume={tmp_path}", "trainer.max_steps=6"],
        run_dir=tmp_path / "elsewhere",
    )
    summary = run(more)
    # 4 steps done before, 2 more after resuming: not 6 from scratch (global step continues).
    assert summary["train"]["steps"] == 6
    # The resumed run wrote its checkpoints into its own folder, not into Hydra's new one.
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 6
    assert not (tmp_path / "elsewhere" / "checkpoints").exists()
    # Distillation is reused from the stage cache (same settings); training is a new key (max_steps).
    assert summary["stages"]["distill"]["status"] == "reused"
    assert summary["stages"]["train"]["status"] == "computed"
    assert (tmp_path / "distill").resolve() == Path(summary["stages"]["distill"]["path"])
    assert (tmp_path / "distill" / "distilled.jsonl").read_bytes() == distilled
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "success"
    assert list(tmp_path.glob("config.resume-*.yaml"))

    # The checkpoint carries its hyperparameters: it rebuilds the student on its own.
    from mwp.student.module import StudentModule

    # The saved student is the best checkpoint's weights (save_top_k=1: one best file).
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    module = StudentModule.load_from_checkpoint(best, map_location="cpu", weights_only=False)
    assert module.hparams["student"]["size"]["d_model"] == first.student.size.d_model
    saved = load_file(tmp_path / "student" / "model.safetensors")
    state = module.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)


def write_gold_gsm8k_batch_results(path: Path, limit: int | None = None) -> Path:
    """A Batch API results file in which every GSM8K training problem (the first `limit`) is answered by its own worked
    solution (calculator notes dropped, "The answer is N." at the end) with a made-up top-5 per token:
    an offline stand-in for a live teacher's chain-of-thought samples with logprobs. Tokens are the
    pieces GPT-2-style BPE starts from (a word or number with its leading space, a punctuation run),
    close to what such a teacher reports, which `loss.signal.alignment=fu2023` needs to match."""
    from mwp.data.loaders import load_problems
    from mwp.teachers.batch import custom_id

    alternates = [" the", " a", " is", " of"]
    with path.open("w") as out:
        for problem in load_problems("gsm8k", "train", limit=limit):
            steps = re.sub(r"<<[^>]*>>", "", (problem.solution or "").rpartition("####")[0]).strip()
            text = f"{steps}\nThe answer is {problem.answer_text}."
            content = [
                {
                    "token": token,
                    "logprob": math.log(0.6),
                    "top_logprobs": [{"token": token, "logprob": math.log(0.6)}]
                    + [{"token": alt, "logprob": math.log(0.05)} for alt in alternates],
                }
                for token in GPT2_PIECES.findall(text)
            ]
            body = {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": {"content": content},
                    }
                ],
            }
            row = {"custom_id": custom_id(problem.id, 0, 1), "response": {"status_code": 200, "body": body}}
            out.write(json.dumps(row) + "\n")
    return path


def tiny_causal_teacher(folder: Path) -> Path:
    """A `from_pretrained` folder of `student=tiny_causal`: a causal LM with SmolLM2's tokenizer."""
    from hydra.utils import instantiate

    from mwp.student.fit import student_config
    from mwp.student.model import save_student

    bundle = instantiate(student_config(typed_config(["student=tiny_causal"])), _convert_="all")
    return save_student(bundle.model, bundle.codec, folder)


def offline_substitutes(experiment: str, tmp_path: Path) -> list[str]:
    """Overrides for what an experiment needs but a CPU test machine lacks (GPUs, real weights, a live teacher)."""
    if experiment == "fltt_weak12k":
        # Weak12K has answers only: SmolLM2 (the offline live teacher) writes the equations, and the
        # enumeration search, which needs no model, recovers what it gets wrong.
        return [
            "teacher=smollm2",
            "teacher.n=1",
            "teacher.max_tokens=24",
            "stage.chain.max_corrections=0",
            "dataset.limit=4",
            "refine=enumeration",
        ]
    if experiment in ("fltt_svamp", "fltt_math23k") or experiment.startswith("refinement_ablation"):
        # their middle model is the real SmolLM2-135M with LoRA: the same code path with the
        # random-init causal LM of SmolLM2's architecture and tokenizer (still with LoRA)
        return [
            "student@refine.middle_model.student=tiny_causal",
            "student/peft@refine.middle_model.student.peft=lora",
        ]
    if experiment == "specialize_smollm2_kd":
        # the dense teacher is a SmolLM2 specialised by experiment=specialize_smollm2; here a saved
        # random-init causal LM with SmolLM2's tokenizer, and the student of the same shape (with LoRA)
        return [
            "student=tiny_causal",
            f"loss.signal.teacher_model={tiny_causal_teacher(tmp_path / 'teacher')}",
            "evaluation.limit=2",
        ]
    if experiment == "specialize_smollm2":
        # the BBH subset before and after: one example of one task stands for the 3 x 15
        return [
            "evaluation.bbh.tasks=[boolean_expressions]",
            "evaluation.bbh.limit_per_task=1",
            "evaluation.bbh.max_new_tokens=16",
            "evaluation.limit=2",
        ]
    if not experiment.startswith("fu2023"):
        return []
    # debug=default distils the first 60 training problems (dataset.limit): reading a results file for
    # all 7,473 took most of the distill stage
    results = write_gold_gsm8k_batch_results(tmp_path / "gold_gsm8k_results.jsonl", limit=100)
    # The per-size variants differ from fu2023_gsm8k in their optimisation and trainer settings only:
    # one format (an in-context one, so the gold exemplars are drawn) and two micro-batches a step (their
    # 3 to 30 would make 2 steps 6 to 60 micro-batches) run those settings; the shared experiment keeps
    # all four formats.
    per_size = (
        []
        if experiment == "fu2023_gsm8k"
        else ["data.formats=[in_context_cot]", "trainer.accumulate_grad_batches=2"]
    )
    # debug=default already swaps the student for a random-init tiny T5 and the hold-out for 10%; a
    # results file has no endpoint, and two BBH tasks of one example each stand for the 27.
    return [
        *per_size,
        "trainer=cpu",
        "teacher=batch_file",
        f"teacher.results={results}",
        "teacher.n=1",
        "~teacher.endpoint",
        "evaluation.bbh.tasks=[boolean_expressions,multistep_arithmetic_two]",
        "evaluation.bbh.limit_per_task=1",
        "evaluation.bbh.max_new_tokens=16",
    ]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_runs_a_few_steps(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config(
        # the middle model of the refinement experiments trains its own steps: shrink those too
        [
            f"experiment={experiment}",
            "debug=default",
            "trainer.max_steps=2",
            "++refine.middle_model.max_steps=2",
            *offline_substitutes(experiment, tmp_path),
        ],
        run_dir=tmp_path / "run",
    )
    summary = run(cfg)
    assert summary["train"]["steps"] == 2
    if cfg.loss.signal.source == "dense" and len(cfg.loss.terms) > 1:
        # the dense teacher gave its distribution at every target token of both steps
        report = summary["train"]["signals"]
        assert report["source"] == "dense" and report["batches"] == 2
        assert report["covered_tokens"] == report["target_tokens"] > 0
    if experiment.startswith("fu2023"):
        if any(term.get("kind") == "forward_kl" for term in cfg.loss.terms):
            # the KL term had the stand-in teacher's top-5 to match on most target tokens, not only the
            # one-hot fallback
            report = summary["train"]["signals"]
            assert (
                report["rows_with_logprobs"] == report["rows"]
                and report["covered_tokens"] > report["target_tokens"] / 2
            )
        # a hold-out picked the checkpoint; the four formats trained one student, in-context ones on
        # four gold exemplars each
        stats = json.loads((tmp_path / "run" / "student" / "train_stats.json").read_text())
        assert stats["val_problems"] >= 1 and stats["batch_size"] == cfg.data.batch_size
        assert stats["exemplars"]["source"] == "gold" and stats["exemplars"]["kept_min"] == 4
        # every table carries Fu et al.'s metric beside the strict headline, and BBH ran
        eval_dir = tmp_path / "run" / "eval"
        results = json.loads((eval_dir / "results.json").read_text())
        assert {r["format"] for r in results} == set(cfg.data.formats)
        assert all(0.0 <= r["last_number_acc"] <= 1.0 for r in results)
        assert "last number (paper)" in (eval_dir / "table.txt").read_text()
        assert json.loads((eval_dir / "bbh_results.json").read_text())["tasks"]


def test_cli_runs_and_prints_the_results_table(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", "experiment=demo", "debug=default", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "strict acc" in proc.stdout and "multiarith" in proc.stdout
    # Nothing that is not the user's business on the console.
    for noise in ("anonymous setting", "litlogger", "LitLogger", "pytree", "is deprecated", "weights_only"):
        assert noise not in proc.stderr + proc.stdout, noise
    runs = list((tmp_path / "demo" / "runs").iterdir())
    assert len(runs) == 1
    assert list((runs[0] / "wandb").glob("offline-run-*")), "W&B offline run expected"
