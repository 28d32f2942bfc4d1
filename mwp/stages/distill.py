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
from mwp.data.artifact import ARTIFACT
from mwp.data.io import write_json
from mwp.data.loaders import load_problems
from mwp.data.shards import shard
from mwp.distill.equation_chain import ChainSettings, distill_chain
from mwp.distill.rationales import STATS, DistillStats, chain_route, distill, resolve_extraction
from mwp.stages.base import Stage, StageContext, StageInput
from mwp.teachers.factory import build_teacher, sampling_params
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

    def run(self, config: RunConfig, source: StageInput, out: Path, context: StageContext) -> dict[str, Any]:
        return run_distill(config, out).to_json()

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
        "distilled %d/%d problems (%.1f%%), %d samples kept of %d -> %s",
        stats.problems_kept,
        stats.problems_seen,
        100 * stats.problem_yield,
        stats.samples_kept,
        stats.samples_seen,
        out_dir / ARTIFACT,
    )
    return stats
