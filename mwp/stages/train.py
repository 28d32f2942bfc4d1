"""The train stage: fine-tune the student on the distilled (or refined) rows (`mwp.student.fit`).

Checkpoints stay in the run folder, so a killed run resumes there (`stage.resume`); the trained
student is the stage's cache entry, linked into the run folder as `student/`. The sparse teacher
signals are built once per content in the stage cache's `signals/` and shared by a sweep's runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mwp.config.schema import RunConfig
from mwp.digest import file_fingerprint
from mwp.stages.base import Stage, StageContext, StageInput

SIGNALS_DIR = "signals"


class TrainStage(Stage):
    name = "train"
    upstream = ("refine", "distill")
    artifact = "student"
    link = "student"
    on_worker = "run"

    def key_settings(self, config: RunConfig) -> dict[str, Any]:
        return {
            **{
                name: getattr(config, name).settings()
                for name in ("student", "loss", "data", "optim", "trainer")
            },
            "callbacks": {
                name: entry.settings() if entry is not None else None
                for name, entry in config.callbacks.items()
            },
            "seed": config.seed,
            "train_split": config.dataset.train_split,
            "select_extraction": config.evaluation.select_extraction,
        }

    def given_input(self, config: RunConfig, context: StageContext) -> StageInput:
        if not config.stage.data:
            # a resumed run without stage.data trains on the data its own folder links to
            return StageInput()
        path = Path(config.stage.data)
        return StageInput(path, "distilled", {"data": file_fingerprint(path)})

    def run(self, config: RunConfig, source: StageInput, out: Path, context: StageContext) -> dict[str, Any]:
        from mwp.student.fit import fit

        assert source.path is not None
        trained = fit(
            config,
            source.path,
            context.run_dir,
            loggers=context.loggers,
            resume=context.resume,
            student_dir=out,
            signals_dir=context.cache_root / SIGNALS_DIR,
        )
        result: dict[str, Any] = {"steps": trained.steps, "best_val_acc": trained.best_val_acc}
        if trained.signals is not None:
            signals = trained.signals
            context.records["signals"] = {
                "status": "reused" if signals["reused"] else "computed",
                "path": signals["path"],
            }
            result["signals"] = signals
        return result

    def summary(self, result: dict[str, Any], entry: Path) -> Any:
        return {**result, "student_dir": str(entry)}

    def describe(self, settings: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        student = settings.get("student") or {}
        return f"{student.get('name_or_path')}, {result.get('steps')} steps, seed {settings.get('seed')}"
