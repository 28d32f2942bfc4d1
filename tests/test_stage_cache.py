"""The stage cache: keys follow the settings that determine each stage, outputs are computed once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mwp.cli.cache import main
from mwp.config import ConfigError
from mwp.config.schema import RunConfig
from mwp.pipeline import run
from mwp.stage_cache import MANIFEST, StageCache, StageKey, forced_stages, stage_key
from mwp.stages import STAGES as PIPELINE
from tests.helpers import REPO_ROOT, compose_config, typed_config

STAGES = ("distill", "refine", "train", "evaluate")


def _stage_key(config: RunConfig, stage: str, upstream: dict[str, str]) -> str:
    return stage_key(stage, PIPELINE[stage].key_settings(config), upstream).key


def _keys(overrides: list[str]) -> dict[str, str]:
    """Every stage's key under these overrides, chained as the pipeline chains them."""
    config = typed_config(["stage=fltt", "refine=middle_model", *overrides])
    distill = _stage_key(config, "distill", {})
    refine = _stage_key(config, "refine", {"distill": distill})
    train = _stage_key(config, "train", {"refine": refine})
    evaluate = _stage_key(config, "evaluate", {"train": train})
    return {"distill": distill, "refine": refine, "train": train, "evaluate": evaluate}


def _changed(overrides: list[str]) -> set[str]:
    base, other = _keys([]), _keys(overrides)
    return {stage for stage in STAGES if base[stage] != other[stage]}


def test_the_same_settings_give_the_same_keys() -> None:
    assert _keys([]) == _keys([])
    assert len(set(_keys([]).values())) == 4


@pytest.mark.parametrize(
    ("override", "recomputed"),
    [
        # upstream settings: that stage and every stage below it
        ("teacher.temperature=0.5", {"distill", "refine", "train", "evaluate"}),
        ("dataset.limit=50", {"distill", "refine", "train", "evaluate"}),
        ("stage.extraction=flexible", {"distill", "refine", "train", "evaluate"}),
        ("refine.max_rounds=1", {"refine", "train", "evaluate"}),
        # the middle model trains with the run's student and seed but its own steps and lr
        ("refine.middle_model.lr=1e-2", {"refine", "train", "evaluate"}),
        ("optim.lr=1e-3", {"train", "evaluate"}),
        ("trainer.max_steps=7", {"refine", "train", "evaluate"}),  # refine.middle_model.max_steps follows it
        ("seed=7", {"refine", "train", "evaluate"}),
        # downstream settings leave everything above them alone
        ("evaluation.limit=5", {"evaluate"}),
        ("dataset.eval_sets=[{name: svamp, split: test, role: in-distribution}]", {"evaluate"}),
        # how a stage runs, or where this run's folder is, changes no output
        ("trainer.enable_progress_bar=true", set()),
        ("trainer.log_every_n_steps=3", set()),
        ("data.num_workers=2", set()),
        ("paths.output_dir=/somewhere/else", set()),
        ("tags=[other]", set()),
    ],
)
def test_a_changed_setting_recomputes_its_stage_and_those_below(override: str, recomputed: set[str]) -> None:
    assert _changed([override]) == recomputed


@pytest.mark.parametrize("override", ["teacher.concurrency=4", "teacher.timeout_s=5", "teacher.cache=false"])
def test_how_a_live_teacher_is_called_changes_no_key(override: str) -> None:
    base = ["stage=distill", "teacher=openai", "teacher.model=served-model", "teacher.api_key_required=false"]
    keys = [_stage_key(typed_config([*base, *extra]), "distill", {}) for extra in ([], [override])]
    assert keys[0] == keys[1]
    assert _stage_key(typed_config([*base, "teacher.temperature=0.1"]), "distill", {}) != keys[0]


def test_refine_depends_on_the_student_only_where_the_student_is_the_middle_model() -> None:
    def keys(method: str, extra: list[str]) -> dict[str, str]:
        config = typed_config(["stage=fltt", f"refine={method}", *extra])
        return {
            "refine": _stage_key(config, "refine", {"distill": "d"}),
            "train": _stage_key(config, "train", {"refine": "r"}),
        }

    # the middle model is its own model by default (SmolLM2 with LoRA): the run's student is not read;
    # refine.middle_model.student=null makes it the run's student architecture, and then it is
    for method, extra, refine_changes in (
        ("middle_model", [], False),
        ("middle_model", ["refine.middle_model.student=null"], True),
        ("enumeration", [], False),
        ("none", [], False),
    ):
        student = ["student.pretrained=never", "student.size.d_model=64"]
        base, other = keys(method, extra), keys(method, [*extra, *student])
        assert (base["refine"] != other["refine"]) is refine_changes, (method, extra)
        assert base["train"] != other["train"]


def test_force_recomputes_a_stage_and_every_stage_after_it() -> None:
    steps = ["distill", "refine", "train", "evaluate"]
    assert forced_stages(False, steps) == set()
    assert forced_stages(True, steps) == set(steps)
    assert forced_stages(["train"], steps) == {"train", "evaluate"}
    assert forced_stages(["refine"], ["distill", "train"]) == set()
    # a misspelt stage is a config error, named with the closest stage, before anything runs
    with pytest.raises(
        ConfigError, match=r"^cache\.force\.0='trian': not a stage; .*\(did you mean train\?\)"
    ):
        typed_config(["cache.force=[trian]"])


def _key(name: str = "k1") -> StageKey:
    return StageKey(stage="distill", key=name, settings={"x": 1}, upstream={})


def test_an_output_is_computed_once_then_reused_and_force_replaces_it(tmp_path: Path) -> None:
    calls: list[Path] = []

    def compute(out: Path) -> dict[str, int]:
        calls.append(out)
        (out / "rows.jsonl").write_text(f"call {len(calls)}\n")
        return {"rows": len(calls)}

    cache = StageCache(tmp_path)
    first = cache.get_or_compute(_key(), compute)
    second = cache.get_or_compute(_key(), compute)
    assert (first.status, second.status) == ("computed", "reused")
    assert first.path == second.path == tmp_path / "distill" / "k1"
    assert second.result == {"rows": 1} and len(calls) == 1
    # it was written in a .partial folder and published by renaming it
    assert calls[0].name == "k1.partial" and not calls[0].exists()
    manifest = json.loads((first.path / MANIFEST).read_text())
    assert manifest["key"] == "k1" and manifest["settings"] == {"x": 1}

    forced = StageCache(tmp_path, force={"distill"}).get_or_compute(_key(), compute)
    assert forced.status == "computed" and forced.result == {"rows": 2}
    assert (forced.path / "rows.jsonl").read_text() == "call 2\n"
    assert sorted(p.name for p in (tmp_path / "distill").iterdir()) == ["k1", "k1.lock", "k1.readers"]


def test_a_crashed_computation_publishes_nothing_and_the_next_one_continues_it(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)

    def crash(out: Path) -> dict[str, int]:
        (out / "half.jsonl").write_text("row 1\n")
        raise RuntimeError("teacher unreachable")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(_key(), crash)
    assert cache.lookup(_key()) is None

    def resume(out: Path) -> dict[str, int]:
        # what the crashed attempt wrote is still there for the stage to continue from
        return {"rows_before": len((out / "half.jsonl").read_text().splitlines())}

    assert cache.get_or_compute(_key(), resume).result == {"rows_before": 1}


def _compute_in_process(root: str, log_path: str) -> str:
    def slow(out: Path) -> dict[str, int]:
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\n")
        for i in range(20):
            (out / f"part-{i}").write_text("x" * 1000)
            time.sleep(0.02)
        return {"parts": 20}

    outcome = StageCache(root).get_or_compute(_key("shared"), slow)
    return f"{outcome.status} {outcome.path}"


def test_parallel_jobs_with_one_key_compute_it_once(tmp_path: Path) -> None:
    log_path = tmp_path / "computed_by.txt"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        outcomes = pool.starmap(_compute_in_process, [(str(tmp_path / "cache"), str(log_path))] * 3)
    assert len(log_path.read_text().splitlines()) == 1
    statuses = sorted(o.split()[0] for o in outcomes)
    assert statuses == ["computed", "reused", "reused"]
    assert len({o.split()[1] for o in outcomes}) == 1
    entry = tmp_path / "cache" / "distill" / "shared"
    assert sorted(p.name for p in entry.iterdir()) == sorted([MANIFEST, *(f"part-{i}" for i in range(20))])


def test_a_sweep_reuses_upstream_stages_and_says_so(tmp_path: Path, stage_cache: Path) -> None:
    base = ["experiment=demo", "debug=default", "trainer.max_steps=2"]
    first = run(compose_config(base, run_dir=tmp_path / "a"))
    assert {s: v["status"] for s, v in first["stages"].items()} == dict.fromkeys(
        ("distill", "train", "evaluate"), "computed"
    )
    # a downstream change (the learning rate): distillation reused, training and evaluation computed
    second = run(compose_config([*base, "optim.lr=3e-3"], run_dir=tmp_path / "b"))
    assert second["stages"]["distill"] == {
        **first["stages"]["distill"],
        "status": "reused",
        "wall_time_s": 0.0,
    }
    assert second["stages"]["train"]["status"] == "computed"
    assert second["stages"]["train"]["key"] != first["stages"]["train"]["key"]
    assert second["distill"] == first["distill"]
    # the same settings again: everything reused, the same figures reported
    third = run(compose_config([*base, "optim.lr=3e-3"], run_dir=tmp_path / "c"))
    assert {s: v["status"] for s, v in third["stages"].items()} == dict.fromkeys(
        ("distill", "train", "evaluate"), "reused"
    )
    assert third["evaluate"] == second["evaluate"] and third["train"]["steps"] == 2
    # each run folder links the outputs it used
    for name in ("a", "b", "c"):
        for link in ("distill", "student", "eval"):
            assert (tmp_path / name / link).is_symlink()
            assert (tmp_path / name / link).resolve().parent.parent == stage_cache.resolve()
    assert (tmp_path / "c" / "student").resolve() == (tmp_path / "b" / "student").resolve()
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["stages"]["train"]["status"] == "reused"


def _distill_job(run_dir: Path, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MWP_STAGE_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MWP_PROGRESS_EVERY_S": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "mwp.cli", "stage=distill", "dataset.limit=200", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_parallel_distill_jobs_write_one_output(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    jobs = [_distill_job(tmp_path / f"job{i}", cache) for i in range(2)]
    outputs = []
    for job in jobs:
        out, _ = job.communicate(timeout=300)
        assert job.returncode == 0, out
        outputs.append(out)
    # each job says what it did with the stage, and (output redirected: no bar) logs its progress as lines
    assert all("[distill] start key=" in out for out in outputs)
    assert sorted("[distill] computed key=" in out for out in outputs) == [False, True]
    computing = next(out for out in outputs if "[distill] computed key=" in out)
    assert "distill svamp/train: 200/200 samples (100%)" in computing
    summaries = [json.loads((tmp_path / f"job{i}" / "summary.json").read_text()) for i in range(2)]
    assert sorted(s["stages"]["distill"]["status"] for s in summaries) == ["computed", "reused"]
    (entry,) = (cache / "distill").glob("*/")
    rows = (entry / "distilled.jsonl").read_text().splitlines()
    assert (
        len(rows) == summaries[0]["distill"]["samples_kept"] == summaries[1]["distill"]["samples_kept"] > 100
    )
    assert all(json.loads(row)["problem"] for row in rows)


def test_mwp_cache_lists_shows_and_prunes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = StageCache(tmp_path)
    for name in ("aaaa1111", "bbbb2222"):
        cache.get_or_compute(_key(name), lambda out: {"problems_kept": 3, "problems_seen": 4})
    cache.release()  # the job that made them has ended: they may be removed
    (tmp_path / "distill" / "cccc3333.partial").mkdir()
    assert main(["--dir", str(tmp_path), "ls"]) == 0
    listing = capsys.readouterr().out
    assert "aaaa1111" in listing and "bbbb2222" in listing and "3/4 problems kept" in listing
    assert "cccc3333.partial  unfinished" in listing and "2 entries" in listing

    assert main(["--dir", str(tmp_path), "show", "bbbb"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == "bbbb2222"

    assert main(["--dir", str(tmp_path), "rm", "aaaa", "--dry-run"]) == 0
    assert (tmp_path / "distill" / "aaaa1111").is_dir()
    assert main(["--dir", str(tmp_path), "rm", "aaaa"]) == 0
    assert not (tmp_path / "distill" / "aaaa1111").exists()
    assert main(["--dir", str(tmp_path), "rm", "--partial"]) == 0
    assert not (tmp_path / "distill" / "cccc3333.partial").exists()
    assert (tmp_path / "distill" / "bbbb2222").is_dir()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--dir", str(tmp_path), "rm", "zzzz"])
    assert "no entry matches 'zzzz'" in capsys.readouterr().err


_HOLDER = """
import sys, time
from pathlib import Path
from mwp.stage_cache import StageCache, StageKey

key = StageKey(stage="distill", key=sys.argv[2], settings={"x": 1}, upstream={})
cache = StageCache(sys.argv[1])
cache.get_or_compute(key, lambda out: (out / "rows.jsonl").write_text("row\\n") and {"rows": 1})
print("holding", flush=True)
time.sleep(120)
"""


def test_mwp_cache_rm_leaves_an_entry_a_running_job_uses(tmp_path: Path) -> None:
    """A job holds every entry it uses until it ends; `rm` says so and removes the rest."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "inuse1"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        free = StageCache(tmp_path)
        free.get_or_compute(_key("free2222"), lambda out: {"rows": 0})
        free.release()
        rm = subprocess.run(
            [sys.executable, "-m", "mwp.cli.cache", "--dir", str(tmp_path), "rm", "--stage", "distill"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert rm.returncode == 2
        assert (
            rm.stderr.strip()
            == f"mwp-cache: error: {tmp_path / 'distill' / 'inuse1'} is in use by a running job; not removed"
        )
        assert (tmp_path / "distill" / "inuse1" / "rows.jsonl").is_file()
        assert not (tmp_path / "distill" / "free2222").exists()
    finally:
        holder.kill()
        holder.wait()
    # the job is gone (killed: the kernel let go of its lock): the entry can go
    assert main(["--dir", str(tmp_path), "rm", "inuse1"]) == 0
    assert not (tmp_path / "distill" / "inuse1").exists()


def test_a_computation_that_fails_before_writing_leaves_no_partial_folder(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)

    def refuse(out: Path) -> dict[str, int]:
        raise ValueError("the dataset file is empty")

    with pytest.raises(ValueError):
        cache.get_or_compute(_key(), refuse)
    assert not list(tmp_path.rglob("*.partial"))


def test_an_incomplete_output_is_published_but_never_reused(tmp_path: Path) -> None:
    calls = []

    def compute(out: Path) -> dict[str, object]:
        calls.append(out)
        return {"rows": 1, "incomplete": "2 teacher calls failed"} if len(calls) == 1 else {"rows": 3}

    first = StageCache(tmp_path).get_or_compute(_key(), compute)
    assert first.status == "computed" and first.incomplete == "2 teacher calls failed"
    assert first.record()["incomplete"] == "2 teacher calls failed"
    second = StageCache(tmp_path).get_or_compute(_key(), compute)
    assert second.status == "computed" and second.result == {"rows": 3} and len(calls) == 2
    assert StageCache(tmp_path).get_or_compute(_key(), compute).status == "reused" and len(calls) == 2
