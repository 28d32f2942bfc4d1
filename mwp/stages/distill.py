"""The distill stage: sample the teacher on the training split and keep what verifies (`mwp.distill`).

Output: `distilled.jsonl` (one kept sample per row), `stats.json` and the teacher's `usage.json`;
From Large to Tiny's equation chain also writes `failed.jsonl`, the problems it could not verify.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mwp.config.schema import RunConfig
from mwp.config.schema.teacher import OpenAITeacherConfig
from mwp.data.artifact import ARTIFACT
from mwp.data.io import DataError, read_json, write_json
from mwp.data.loaders import load_problems
from mwp.data.shards import shard
from mwp.distill.equation_chain import ChainSettings, distill_chain
from mwp.distill.rationales import STATS, DistillStats, chain_route, distill, resolve_extraction
from mwp.stage_cache import INCOMPLETE
from mwp.stages.base import Stage, StageContext, StageError, StageInput
from mwp.teachers.factory import build_teacher, connection_problem, input_problems, sampling_params
from mwp.teachers.prompts import build_requests
from mwp.teachers.usage import teacher_usage
from mwp.verify.equations import DEFAULT_CONSTANTS

log = logging.getLogger(__name__)

USAGE = "usage.json"


class DistillStage(Stage):
    name = "distill"
    artifact = "distilled"
    artifact_files = (ARTIFACT,)

    def key_settings(self, config: RunConfig) -> dict[str, Any]:
        dataset = config.dataset.settings()
        dataset.pop("eval_sets", None)
        stage = config.stage.settings()
        return {
            "dataset": dataset,
            "teacher": config.teacher.settings(),
            "prompt": config.prompt.settings() if config.prompt is not None else None,
            "stage": {k: stage[k] for k in ("extraction", "shard", "num_shards", "dedup", "chain")},
            "data_dir": config.paths.data_dir,
        }

    def check_inputs(self, config: RunConfig, context: StageContext) -> list[str]:
        problems = []
        try:
            load_problems(
                config.dataset.name,
                config.dataset.train_split,
                config.paths.data_dir,
                limit=config.dataset.limit,
            )
        except DataError as err:
            problems.append(str(err))
        teacher = input_problems(config.teacher, config.dataset.train_split)
        # An unreachable server is found now, not after the run folder and the W&B run were made.
        unreachable = None if teacher else connection_problem(config.teacher)
        return [*problems, *teacher, *([unreachable] if unreachable else [])]

    def run(self, config: RunConfig, source: StageInput, out: Path, context: StageContext) -> dict[str, Any]:
        stats = run_distill(config, out)
        usage = read_json(out / USAGE)
        failed = int(usage.get("failed_calls") or 0) if isinstance(usage, dict) else 0
        if stats.problems_seen and not stats.samples_kept:
            if "refine" not in config.stage.steps or config.refine.method == "none":
                raise StageError(f"{nothing_kept(config, stats, failed)}; nothing is published")
            # From Large to Tiny's refine step exists for the problems distillation leaves: it gets them all.
            log.warning(
                "%s; refine=%s takes every problem", nothing_kept(config, stats, failed), config.refine.method
            )
        result = stats.to_json()
        # Reused later, such an output would stand for samples never received: it is computed again
        # instead, and the teacher's completion cache asks only for what did not arrive.
        missing = []
        if failed:
            missing.append(f"{failed} teacher calls failed and were skipped (teacher.on_error=skip)")
        asked = (stats.problems_seen - stats.problems_uncovered) * config.teacher.n
        if isinstance(config.teacher, OpenAITeacherConfig) and not failed and stats.samples_seen < asked:
            missing.append(f"the teacher returned {stats.samples_seen} of the {asked} samples asked for")
        if missing:
            result[INCOMPLETE] = "; ".join(missing)
            log.warning("distill: %s", result[INCOMPLETE])
        return result

    def external_inputs(self, config: RunConfig) -> list[tuple[str, Path]]:
        """The teacher's samples when they are files: a recording's folder (`teacher.path`), a batch
        results file (`teacher.results`) or an explicit completion cache (`teacher.cache_path`)."""
        teacher = config.teacher
        for key in ("results", "cache_path", "path"):
            value = getattr(teacher, key, None)
            if value and Path(str(value)).exists():
                return [("teacher-samples", Path(str(value)))]
        return []

    def describe(self, settings: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        dataset = (settings.get("dataset") or {}).get("name")
        teacher = (settings.get("teacher") or {}).get("name")
        return f"{dataset} from {teacher}: {result.get('problems_kept')}/{result.get('problems_seen')} problems kept"


def nothing_kept(config: RunConfig, stats: DistillStats, failed_calls: int) -> str:
    """Why a distill kept no sample, and what to change: the one line its failure says."""
    seen = stats.problems_seen
    if stats.problems_uncovered == seen:
        why = f"teacher {stats.teacher!r} covers none of the {seen} problems of {stats.dataset}/{stats.split}"
    elif failed_calls and not stats.samples_seen:
        on_error = getattr(config.teacher, "on_error", "skip")
        why = (
            f"every teacher call failed: {failed_calls} calls failed and were skipped "
            f"(teacher.on_error={on_error}; their errors are in the log)"
        )
    else:
        why = (
            f"none of the {stats.samples_seen} samples for {seen} problems verified "
            f"({stats.samples_no_answer} without an answer, {stats.samples_wrong} wrong"
            f"{f', {failed_calls} teacher calls failed and were skipped' if failed_calls else ''}; "
            f"stage.extraction={config.stage.extraction})"
        )
    return f"distill kept nothing: {why}"


def run_distill(config: RunConfig, out_dir: Path) -> DistillStats:
    """Sample the configured teacher on the training split (this job's shard of it) into `out_dir`."""
    split = config.dataset.train_split
    problems = load_problems(config.dataset.name, split, config.paths.data_dir, limit=config.dataset.limit)
    # stage.shard=i stage.num_shards=k: this run samples one stable-hash shard of the problems
    problems = shard(problems, config.stage.shard, config.stage.num_shards)
    teacher = build_teacher(config.teacher)
    prompt = config.prompt
    try:
        requests = build_requests(problems, prompt, data_dir=config.paths.data_dir)
        params = sampling_params(config.teacher)
        if prompt is not None and prompt.stop:
            params = replace(params, stop=tuple(dict.fromkeys([*params.stop, *prompt.stop])))
        extraction = resolve_extraction(config.stage.extraction, prompt)
        route = chain_route(prompt, extraction)
        if route is not None:
            chain = config.stage.chain
            settings = ChainSettings(
                max_corrections=chain.max_corrections,
                dedup_trials=chain.dedup_trials,
                constants=DEFAULT_CONSTANTS if chain.constants is None else tuple(chain.constants),
                final_expression=route == "final_expression",
            )
            chain_stats = distill_chain(
                problems,
                teacher,
                requests,
                params,
                out_dir,
                dataset=config.dataset.name,
                split=split,
                prompt_cfg=prompt,
                settings=settings,
            )
            stats = DistillStats.from_chain(chain_stats)
            write_json(out_dir / STATS, stats.to_json())
        else:
            stats = distill(
                problems,
                teacher,
                requests,
                params,
                out_dir,
                dataset=config.dataset.name,
                split=split,
                extraction=extraction,
                dedup=config.stage.dedup,
            )
        # tokens, calls and money spent (zero for recorded teachers), next to the artifact
        teacher_usage(teacher).write(out_dir / USAGE)
    finally:
        teacher.close()
    log.info(
        "distilled %d/%d problems (%.1f%%), %d samples kept of %d",
        stats.problems_kept,
        stats.problems_seen,
        100 * stats.problem_yield,
        stats.samples_kept,
        stats.samples_seen,
    )
    return stats
