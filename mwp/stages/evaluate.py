"""The evaluate stage: score the trained student (and any other configured model) on every evaluation set.

The scoring is `mwp.evaluation.suite`; its outputs are the predictions, `results.json`, the tables and,
with `evaluation=bbh`, BIG-Bench Hard's. The heavy imports happen when the stage runs, so that checking
a config never loads a model library.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mwp.config.schema import RunConfig
from mwp.digest import folder_stamp
from mwp.stages.base import Stage, StageContext, StageInput

RESULTS = "results.json"
BBH_RESULTS = "bbh_results*.json"


class EvaluateStage(Stage):
    name = "evaluate"
    upstream = ("train",)
    artifact = "predictions"
    artifact_files = ("predictions_*.jsonl", RESULTS, BBH_RESULTS)
    link = "eval"
    on_worker = "skip"

    def key_settings(self, config: RunConfig) -> dict[str, Any]:
        # `initial` scores the configured student as built: its settings determine that row.
        initial = (
            {"student": config.student.settings(), "seed": config.seed}
            if "initial" in config.evaluation.models
            else {}
        )
        return initial | {
            "evaluation": config.evaluation.settings(),
            "eval_sets": [spec.settings() for spec in config.dataset.eval_sets],
            # in-context exemplars come from the training split; templates are read in this notation
            "dataset": {"name": config.dataset.name, "train_split": config.dataset.train_split},
            "equation_notation": config.data.equation_notation,
            "data_dir": config.paths.data_dir,
        }

    def check_inputs(self, config: RunConfig, context: StageContext) -> list[str]:
        from mwp.data.io import DataError
        from mwp.data.loaders import load_problems

        problems = []
        for index, spec in enumerate(config.dataset.eval_sets):
            try:
                load_problems(spec.name, spec.split, config.paths.data_dir, limit=config.evaluation.limit)
            except DataError as err:
                problems.append(f"dataset.eval_sets.{index}: {err}")
        given = config.stage.student and "train" not in config.stage.steps
        if given and "student" in config.evaluation.models:
            folder = Path(str(config.stage.student))
            if not (folder / "config.json").is_file():
                problems.append(
                    f"stage.student={str(folder)!r}: not a trained student folder (no config.json)"
                )
        return problems

    def given_input(self, config: RunConfig, context: StageContext) -> StageInput:
        if config.stage.student:
            path = Path(config.stage.student)
            return StageInput(path, "student", {"student": folder_stamp(path)})
        # the evaluated models are the teacher or local folders only, or a resumed run's own student
        return StageInput(context.run_dir / "student", None, {})

    def run(self, config: RunConfig, source: StageInput, out: Path, context: StageContext) -> dict[str, Any]:
        from mwp.evaluation.suite import run_evaluate

        assert source.path is not None
        return {"results": [r.summary() for r in run_evaluate(config, out, context.loggers, source.path)]}

    def replay(self, entry: Path, context: StageContext) -> None:
        from mwp.evaluation.suite import replay_evaluation

        replay_evaluation(entry, context.loggers)

    def summary(self, result: dict[str, Any], entry: Path) -> Any:
        return result["results"]

    def describe(self, settings: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        rows = result.get("results") or []
        return ", ".join(
            f"{r.get('dataset')}/{r.get('split')} {100 * float(r.get('flexible_acc') or 0):.1f}%"
            for r in rows[:4]
        )
