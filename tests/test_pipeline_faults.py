"""Faults a run meets, each a clear error or a correct result: nothing paid for is lost, nothing failed is reused.

A live teacher here is a loopback server that solves MultiArith (`tests.teacher_server`), failing
on demand; runs go through `mwp.pipeline.run` with the composed config, as the CLI runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mwp.config import ConfigError
from mwp.data.artifact import TokenLogprobs
from mwp.data.io import DataError
from mwp.data.loaders import load_problems
from mwp.distill.rationales import logprobs_cover
from mwp.pipeline import run as run_pipeline
from mwp.stages import StageError
from tests.helpers import REPO_ROOT, compose_config, typed_config
from tests.teacher_server import SolvingServer, teacher_overrides

PROBLEMS = 5


def _problems():
    return load_problems("multiarith", "train", limit=PROBLEMS)


def _distill(tmp_path: Path, server: SolvingServer, name: str, *more: str) -> dict:
    overrides = [
        "stage=distill",
        "dataset=multiarith",
        f"dataset.limit={PROBLEMS}",
        "teacher.n=2",
        "logger=csv",
        *teacher_overrides(server, str(tmp_path / "teacher.jsonl"), *more),
    ]
    return run_pipeline(compose_config(overrides, run_dir=tmp_path / name))


def _published(stage_cache: Path, stage: str = "distill") -> list[Path]:
    return sorted(p.parent for p in (stage_cache / stage).glob("*/manifest.json"))


def test_a_distill_whose_every_call_failed_fails_and_publishes_nothing(
    tmp_path: Path, stage_cache: Path
) -> None:
    """on_error=skip against a server answering HTTP 500: not a success with 0 rows, reused later."""
    with SolvingServer(_problems(), faults=["500"] * PROBLEMS) as server:
        with pytest.raises(StageError) as err:
            _distill(tmp_path, server, "failing", "teacher.on_error=skip")
        assert str(err.value).startswith(
            f"distill kept nothing: every teacher call failed: {PROBLEMS} calls failed and were skipped "
            "(teacher.on_error=skip"
        )
        assert _published(stage_cache) == []
        assert json.loads((tmp_path / "failing" / "summary.json").read_text())["status"] == "failed"
        # The server is healthy again: the same settings ask it, and keep what it answers.
        summary = _distill(tmp_path, server, "healthy", "teacher.on_error=skip")
        assert server.ok_calls() == PROBLEMS
        assert summary["stages"]["distill"]["status"] == "computed"
        assert summary["distill"]["problems_kept"] == PROBLEMS


def test_an_output_with_skipped_calls_is_used_once_and_never_reused(
    tmp_path: Path, stage_cache: Path
) -> None:
    with SolvingServer(_problems(), faults=["500"]) as server:
        first = _distill(tmp_path, server, "first", "teacher.on_error=skip", "teacher.concurrency=1")
        record = first["stages"]["distill"]
        assert record["incomplete"] == "1 teacher calls failed and were skipped (teacher.on_error=skip)"
        assert first["distill"]["problems_kept"] == PROBLEMS - 1
        # Computed again, not reused; the completion cache means only the failed problem is asked.
        second = _distill(tmp_path, server, "second", "teacher.on_error=skip", "teacher.concurrency=1")
        assert second["stages"]["distill"]["status"] == "computed"
        assert "incomplete" not in second["stages"]["distill"]
        assert second["distill"]["problems_kept"] == PROBLEMS
        assert server.ok_calls() == PROBLEMS
        third = _distill(tmp_path, server, "third", "teacher.on_error=skip", "teacher.concurrency=1")
        assert third["stages"]["distill"]["status"] == "reused" and server.ok_calls() == PROBLEMS


def test_a_distill_that_verifies_nothing_says_why(tmp_path: Path, stage_cache: Path) -> None:
    wrong = r"none of the 10 samples for 5 problems verified \(0 without an answer, 10 wrong"
    with SolvingServer([]) as server, pytest.raises(StageError, match=wrong):  # it answers 0 to all
        _distill(tmp_path, server, "wrong")
    assert _published(stage_cache) == []


def test_a_distill_that_keeps_nothing_hands_every_problem_to_a_refine_step(tmp_path: Path) -> None:
    """From Large to Tiny's refine step exists for the problems distillation leaves: then it is no failure."""
    with SolvingServer([]) as server:
        summary = _distill(tmp_path, server, "refined", "stage.steps=[distill,refine]", "refine=enumeration")
    assert summary["distill"]["samples_kept"] == 0
    assert summary["refine"]["failed"] == PROBLEMS and summary["refine"]["recovered"] > 0


def test_a_bad_dataset_file_fails_before_the_run_folder_and_leaves_no_partial(
    tmp_path: Path, stage_cache: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("qid,text,ask,result,formula,part\n")
    cfg = compose_config(
        [
            "dataset=example_custom",
            f"dataset.source.files.all={empty}",
            "stage=distill",
            "teacher=simulated",
            "teacher.dataset=example_custom",
            "prompt=fltt_en",
        ],
        run_dir=tmp_path / "run",
    )
    with pytest.raises(
        DataError, match=rf"dataset 'example_custom' has no problems in split 'train' \(read {empty}\)"
    ):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()
    assert not list(stage_cache.rglob("*.partial"))


def test_resuming_from_a_truncated_checkpoint_fails_before_any_work(
    tmp_path: Path, stage_cache: Path
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("task_name: demo\n")
    # the first kilobyte of a real torch checkpoint: a zip whose central directory was never written
    import torch

    torch.save({"state_dict": {"w": torch.zeros(512)}}, run_dir / "full.ckpt")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes((run_dir / "full.ckpt").read_bytes()[:1024])
    cfg = compose_config(
        ["experiment=demo", "debug=default", f"stage.resume={run_dir}"], run_dir=tmp_path / "new"
    )
    with pytest.raises(DataError, match=r"^stage\.resume: .*last\.ckpt is not a readable checkpoint"):
        run_pipeline(cfg)
    assert _published(stage_cache) == [] and not (run_dir / "summary.json").exists()


def test_a_teacher_that_returns_fewer_samples_than_asked_is_asked_again_next_run(
    tmp_path: Path, stage_cache: Path
) -> None:
    """A server that caps n (one choice fewer than asked), top-ups off: the samples received are kept,
    the output says it is short and is not reused, and the next run asks only for the missing ones."""
    with SolvingServer(_problems(), quirk="fewer") as server:
        first = _distill(tmp_path, server, "first", "teacher.n=3", "teacher.max_topup_rounds=0")
        assert (
            first["stages"]["distill"]["incomplete"] == "the teacher returned 10 of the 15 samples asked for"
        )
        second = _distill(tmp_path, server, "second", "teacher.n=3")
        assert (
            second["stages"]["distill"]["status"] == "computed"
            and "incomplete" not in second["stages"]["distill"]
        )
        assert second["distill"]["samples_seen"] == 15
        # only the missing third sample of each problem was asked for
        assert [call["body"]["n"] for call in server.calls] == [3] * PROBLEMS + [1] * PROBLEMS


def test_a_teacher_that_returns_fewer_samples_than_asked_is_topped_up_in_the_same_run(
    tmp_path: Path, stage_cache: Path
) -> None:
    with SolvingServer(_problems(), quirk="fewer") as server:
        summary = _distill(tmp_path, server, "topped", "teacher.n=3")
    assert "incomplete" not in summary["stages"]["distill"]
    assert summary["distill"]["samples_seen"] == 3 * PROBLEMS
    assert sorted(call["body"]["n"] for call in server.calls) == [1] * PROBLEMS + [3] * PROBLEMS


def test_duplicate_choices_are_counted_and_kept_once(tmp_path: Path, stage_cache: Path) -> None:
    with SolvingServer(_problems(), quirk="duplicate") as server:
        summary = _distill(tmp_path, server, "dup", "teacher.n=3")
    assert (summary["distill"]["samples_kept"], summary["distill"]["samples_duplicate"]) == (
        PROBLEMS,
        2 * PROBLEMS,
    )


@pytest.mark.parametrize("quirk", [None, "short_logprobs"])
def test_logprobs_that_cover_only_part_of_the_text_are_not_kept(
    tmp_path: Path, stage_cache: Path, quirk: str | None
) -> None:
    with SolvingServer(_problems(), quirk=quirk) as server:
        summary = _distill(tmp_path, server, "lp", "teacher.top_logprobs=2")
    rows = [
        json.loads(line)
        for line in (tmp_path / "lp" / "distill" / "distilled.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 * PROBLEMS
    if quirk is None:
        assert summary["distill"]["samples_partial_logprobs"] == 0 and all(r.get("logprobs") for r in rows)
    else:
        assert summary["distill"]["samples_partial_logprobs"] == 2 * PROBLEMS
        assert not any(r.get("logprobs") for r in rows)


def test_tokens_decoded_one_by_one_without_their_spaces_still_cover_the_text() -> None:
    text = "Tom has 3 apples. The answer is 7."
    spaced = ["Tom", " has", " 3", " apples", ".", " The", " answer", " is", " 7", "."]
    assert logprobs_cover(TokenLogprobs(spaced, [-0.1] * len(spaced)), text)
    sentencepiece = [t.strip() for t in spaced]  # what decoding a SentencePiece token alone gives
    assert logprobs_cover(TokenLogprobs(sentencepiece, [-0.1] * len(spaced)), text)
    assert not logprobs_cover(TokenLogprobs(spaced[:5], [-0.1] * 5), text)


def test_an_explicit_student_folder_is_loaded_whatever_the_preset_says(tmp_path: Path) -> None:
    """`experiment=demo` picks flan_t5_mini (pretrained: never); an explicit folder must still win."""
    import torch
    from hydra.utils import instantiate
    from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration

    from mwp.paths import default_models_dir

    base = default_models_dir() / "flan-t5-small"
    shape = AutoConfig.from_pretrained(base)
    for key, value in {
        "d_model": 32,
        "d_ff": 64,
        "d_kv": 8,
        "num_layers": 1,
        "num_decoder_layers": 1,
    }.items():
        setattr(shape, key, value)
    shape.num_heads = 2
    trained = T5ForConditionalGeneration(shape)
    trained.save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "student")
    config = typed_config(["experiment=demo", f"student.name_or_path={tmp_path / 'student'}"])
    bundle = instantiate({**config.student.model_dump(by_alias=True), "seed": config.seed}, _convert_="all")
    assert bundle.pretrained
    assert torch.equal(bundle.model.shared.weight, trained.shared.weight)


def test_an_explicit_student_path_that_does_not_exist_fails_the_config_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"student\.name_or_path"):
        typed_config(["experiment=demo", f"student.name_or_path={tmp_path / 'nowhere'}"])


def _cli(tmp_path: Path, *overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mwp.cli", *overrides, f"paths.log_dir={tmp_path / 'outputs'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        # Ctrl+C as a user's shell delivers it: an ignored SIGINT is inherited, and code that ran earlier
        # in this test process (Lightning's shutdown path) can leave it ignored
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_folders(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "outputs").rglob("runs/*/.hydra"))


@pytest.mark.slow
def test_resuming_a_run_leaves_no_stray_folder_behind(tmp_path: Path) -> None:
    first = _cli(tmp_path, "stage=distill", "dataset.limit=20")
    assert first.wait(timeout=180) == 0, first.stderr.read() if first.stderr else ""
    (run_dir,) = _run_folders(tmp_path)
    again = _cli(tmp_path, "stage=distill", "dataset.limit=20", f"stage.resume={run_dir}")
    assert again.wait(timeout=180) == 0, again.stderr.read() if again.stderr else ""
    # Hydra's new folder was folded into the resumed run: its .hydra/ and its log lines
    assert [p.parent for p in (tmp_path / "outputs").rglob("runs/*")] == [run_dir.parent]
    assert len(list(run_dir.glob(".hydra.resume-*/overrides.yaml"))) == 1
    assert "resuming the run in" in (run_dir / "mwp.log").read_text()


@pytest.mark.slow
def test_ctrl_c_during_training_records_an_interrupted_run(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "experiment=demo", "debug=default", "trainer.max_steps=100000", "logger=csv")
    deadline = time.monotonic() + 240
    while not any("training on" in p.read_text() for p in (tmp_path / "outputs").rglob("mwp.log")):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    (run_dir,) = _run_folders(tmp_path)
    assert proc.returncode == 130, err[-3000:]
    message = f"interrupted (SIGINT) during the train stage; continue with stage.resume={run_dir}"
    assert err.strip().splitlines()[-1] == f"mwp: {message}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["error"]) == ("interrupted", message)


def test_the_log_names_published_outputs_not_the_partial_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        run_pipeline(
            compose_config(
                [
                    "experiment=demo_equation",
                    "stage.steps=[distill,refine]",
                    "dataset.limit=20",
                    "logger=csv",
                ],
                run_dir=tmp_path,
            )
        )
    assert "[refine] computed" in caplog.text and ".partial" not in caplog.text


def test_mwp_cache_ls_calls_a_random_init_student_one() -> None:
    from mwp.stages import STAGES

    config = typed_config(["experiment=demo"])
    settings = STAGES["train"].key_settings(config)
    line = STAGES["train"].describe(settings, {"steps": 60})
    assert line.startswith("random init (config of google/flan-t5-small, d_model 256)"), line


def test_an_unreachable_teacher_fails_before_the_run_folder(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = compose_config(
        [
            "stage=distill",
            "dataset=multiarith",
            "dataset.limit=3",
            "teacher=vllm",
            "teacher.model=m",
            f"teacher.base_url=http://127.0.0.1:{port}/v1",
        ],
        run_dir=tmp_path / "run",
    )
    with pytest.raises(DataError, match=rf"^teacher\.base_url=http://127\.0\.0\.1:{port}/v1: cannot connect"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()
