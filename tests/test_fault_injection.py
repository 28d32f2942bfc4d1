"""Faults injected into real runs: SIGKILL at every stage boundary and inside stages, a full disk, a clock
set back, and two sweeps sharing one stage cache. Each must end in a clear error or a correct result,
and leave the stage cache and the run folder as a later run can use them.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mwp.pipeline
from mwp.cli.cache import main as mwp_cache
from mwp.data.loaders import load_problems
from mwp.pipeline import run as run_pipeline
from mwp.stage_cache import MANIFEST, PARTIAL
from tests.helpers import REPO_ROOT, compose_config
from tests.teacher_server import SolvingServer, teacher_overrides

# distill -> refine -> train -> evaluate in about 25 CPU-seconds
TINY = [
    "experiment=demo_equation",
    "debug=default",
    "dataset.limit=30",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "evaluation.limit=4",
    "logger=csv",
]


def _start(
    tmp_path: Path, name: str, *overrides: str, preexec: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """`mwp` in a subprocess, its console output in a file (a pipe nobody reads could block it)."""
    out = tmp_path / f"{name}.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mwp.cli", *overrides],
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        preexec_fn=preexec,
    )
    return proc, out


def _kill_when(proc: subprocess.Popen[bytes], out: Path, text: str, after_s: float = 0.0) -> bool:
    """SIGKILL `proc` `after_s` seconds after `text` appears in its output; False if it ended first."""
    deadline = time.monotonic() + 300
    while text.encode() not in out.read_bytes():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, out.read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(after_s)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _assert_cache_consistent(cache: Path) -> dict[str, list[str]]:
    """Every published entry has its manifest; returns the unfinished outputs by stage."""
    partial: dict[str, list[str]] = {}
    for entry in sorted(p for p in cache.glob("*/*") if p.is_dir()):
        if entry.name.endswith(PARTIAL):
            partial.setdefault(entry.parent.name, []).append(entry.name)
        elif entry.parent.name != "signals":
            manifest = json.loads((entry / MANIFEST).read_text())
            assert manifest["key"] == entry.name and manifest["stage"] == entry.parent.name
    return partial


@pytest.mark.slow
def test_sigkill_at_every_stage_boundary_and_inside_stages_then_resume(tmp_path: Path) -> None:
    """One run killed four times (between distill and refine, inside training, between training and
    evaluation, inside evaluation), resumed each time: it ends as an uninterrupted run does."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    common = [*TINY, f"cache.dir={cache}"]
    kills = [
        ("[refine] start", 0.0, {"distill"}),
        ("training on", 1.0, {"distill", "refine"}),
        ("[evaluate] start", 0.0, {"distill", "refine", "train"}),
        ("[evaluate] start", 1.0, {"distill", "refine", "train"}),
    ]
    for attempt, (text, after_s, published) in enumerate(kills):
        where = (
            [f"hydra.run.dir={run_dir}"]
            if attempt == 0
            else [f"stage.resume={run_dir}", f"hydra.run.dir={tmp_path / f'hydra-{attempt}'}"]
        )
        proc, out = _start(tmp_path, f"attempt-{attempt}", *common, *where)
        killed = _kill_when(proc, out, text, after_s)
        # the last kill may come too late on a fast machine (evaluation takes seconds): then it finished
        assert killed or (attempt == len(kills) - 1 and proc.returncode == 0), out.read_text()[-3000:]
        _assert_cache_consistent(cache)
        assert {p.parent.parent.name for p in cache.glob(f"*/*/{MANIFEST}")} >= published
        assert not (run_dir / "summary.json").exists() or killed is False
    proc, out = _start(
        tmp_path, "last", *common, f"stage.resume={run_dir}", f"hydra.run.dir={tmp_path / 'hydra-last'}"
    )
    assert proc.wait(timeout=300) == 0, out.read_text()[-3000:]
    assert _assert_cache_consistent(cache) == {}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "success"
    assert summary["stages"]["distill"]["status"] == summary["stages"]["refine"]["status"] == "reused"
    # the same results as a run never interrupted
    clean, out = _start(
        tmp_path,
        "clean",
        *TINY,
        f"cache.dir={tmp_path / 'clean-cache'}",
        f"hydra.run.dir={tmp_path / 'clean'}",
    )
    assert clean.wait(timeout=300) == 0, out.read_text()[-3000:]
    resumed = json.loads((run_dir / "eval" / "results.json").read_text())
    expected = json.loads((tmp_path / "clean" / "eval" / "results.json").read_text())
    assert [{k: r[k] for k in ("dataset", "size", "strict_acc", "flexible_acc")} for r in resumed] == [
        {k: r[k] for k in ("dataset", "size", "strict_acc", "flexible_acc")} for r in expected
    ]
    assert (run_dir / "distill" / "distilled.jsonl").is_file() and (
        run_dir / "refine" / "refined.jsonl"
    ).is_file()
    assert not list(tmp_path.glob("hydra-*"))  # every resume folded Hydra's folder into the run


def _no_bigger_files_than(limit: int) -> Callable[[], None]:
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        # Past the limit a write fails with EFBIG instead of the process being killed by SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit_files


DISTILL_200 = ["stage=distill", "dataset.limit=200", "logger=csv"]


def test_a_full_disk_while_distilling_is_one_line_and_the_next_run_finishes_the_job(tmp_path: Path) -> None:
    """Files capped at 32 KiB (RLIMIT_FSIZE, as a full disk or quota would stop them; the data is ~130 KB)."""
    cache = tmp_path / "cache"
    proc, out = _start(
        tmp_path,
        "full",
        *DISTILL_200,
        f"cache.dir={cache}",
        f"hydra.run.dir={tmp_path / 'full'}",
        preexec=_no_bigger_files_than(32 * 1024),
    )
    assert proc.wait(timeout=180) == 2, out.read_text()[-3000:]
    errors = [line for line in out.read_text().splitlines() if line.startswith("mwp: error: ")]
    assert len(errors) == 1 and "File too large" in errors[0] and "distilled.jsonl" in errors[0], (
        out.read_text()[-2000:]
    )
    assert "Traceback" not in out.read_text()
    assert _assert_cache_consistent(cache) == {"distill": [next(cache.glob("distill/*.partial")).name]}
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["status"] == "failed"
    # space again: the same settings finish the job, as a run that never ran out of space does
    again = run_pipeline(compose_config([*DISTILL_200, f"cache.dir={cache}"], run_dir=tmp_path / "again"))
    run_pipeline(
        compose_config([*DISTILL_200, f"cache.dir={tmp_path / 'clean-cache'}"], run_dir=tmp_path / "clean")
    )
    assert again["stages"]["distill"]["status"] == "computed" and _assert_cache_consistent(cache) == {}
    assert (tmp_path / "again" / "distill" / "distilled.jsonl").read_bytes() == (
        tmp_path / "clean" / "distill" / "distilled.jsonl"
    ).read_bytes()


@pytest.mark.slow
def test_a_full_tmpfs_cache_is_one_line_and_leaves_no_half_entry(tmp_path: Path) -> None:
    """The stage cache on a 64 KiB tmpfs: a real ENOSPC (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (the RLIMIT_FSIZE test covers a full disk)")
    try:
        proc, out = _start(
            tmp_path, "full", *DISTILL_200, f"cache.dir={mount}", f"hydra.run.dir={tmp_path / 'full'}"
        )
        assert proc.wait(timeout=180) == 2, out.read_text()[-3000:]
        errors = [line for line in out.read_text().splitlines() if line.startswith("mwp: error: ")]
        assert len(errors) == 1 and "No space left on device" in errors[0], out.read_text()[-2000:]
        assert not list(mount.glob(f"distill/*/{MANIFEST}"))
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        again = run_pipeline(compose_config([*DISTILL_200, f"cache.dir={mount}"], run_dir=tmp_path / "again"))
        assert again["stages"]["distill"]["status"] == "computed" and _assert_cache_consistent(mount) == {}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_clock_set_back_never_overwrites_a_resume_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two resumes stamped with the same time (the clock was set back between them) keep both configs."""
    overrides = ["stage=distill", "dataset.limit=10", "logger=csv"]
    run_pipeline(compose_config(overrides, run_dir=tmp_path / "run"))
    monkeypatch.setattr(mwp.pipeline, "_stamp", lambda: "2020-01-01_00-00-00-000000")
    for _ in range(2):
        run_pipeline(
            compose_config([*overrides, f"stage.resume={tmp_path / 'run'}"], run_dir=tmp_path / "new")
        )
    records = sorted(p.name for p in (tmp_path / "run").glob("config.resume-*.yaml"))
    assert records == [
        "config.resume-2020-01-01_00-00-00-000000-1.yaml",
        "config.resume-2020-01-01_00-00-00-000000.yaml",
    ]


def test_entries_made_while_the_clock_was_ahead_are_listed_and_pruned_sanely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    run_pipeline(
        compose_config(
            ["stage=distill", "dataset.limit=10", "logger=csv", f"cache.dir={cache}"],
            run_dir=tmp_path / "run",
        )
    )
    (manifest,) = cache.glob(f"distill/*/{MANIFEST}")
    data = json.loads(manifest.read_text())
    data["created"] = "2099-01-01T00:00:00+00:00"
    manifest.write_text(json.dumps(data))
    assert mwp_cache(["--dir", str(cache), "ls"]) == 0
    assert "2099-01-01T00:00:00" in capsys.readouterr().out
    # "older than 0 days" never takes an entry from the future for an old one
    assert mwp_cache(["--dir", str(cache), "rm", "--older-than", "0"]) == 0
    assert manifest.is_file()


@pytest.mark.slow
def test_two_sweeps_sharing_one_cache_ask_the_teacher_once(tmp_path: Path) -> None:
    """Two multiruns of two parallel jobs each (four processes) need one distill output: one job
    computes it, asking the teacher once per problem; the others wait and reuse it."""
    problems = load_problems("multiarith", "train", limit=20)
    cache = tmp_path / "cache"
    with SolvingServer(problems, latency_s=0.05) as server:
        common = [
            "-m",
            "hydra/launcher=parallel",
            "stage=distill",
            "dataset=multiarith",
            "dataset.limit=20",
            "teacher.concurrency=1",
            "logger=csv",
            "seed=1,2",
            f"cache.dir={cache}",
            *teacher_overrides(server, str(tmp_path / "teacher.jsonl")),
        ]
        sweeps = [
            _start(tmp_path, f"sweep-{i}", *common, f"hydra.sweep.dir={tmp_path / f'sweep-{i}'}")
            for i in range(2)
        ]
        for proc, out in sweeps:
            assert proc.wait(timeout=300) == 0, out.read_text()[-3000:]
    assert server.ok_calls() == len(problems)
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("sweep-*/*/summary.json")]
    assert len(summaries) == 4 and all(s["status"] == "success" for s in summaries)
    assert sorted(s["stages"]["distill"]["status"] for s in summaries) == [
        "computed",
        "reused",
        "reused",
        "reused",
    ]
    assert len({s["stages"]["distill"]["path"] for s in summaries}) == 1
    assert _assert_cache_consistent(cache) == {}
