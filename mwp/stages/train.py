"""The train stage: fine-tune the student on the distilled (or refined) rows (`mwp.student.fit`).

Checkpoints stay in the run folder, so a killed run resumes there (`stage.resume`); the trained
student is the stage's cache entry, linked into the run folder as `student/`. The sparse teacher
signals are built once per content in the stage cache's `signals/` and shared by a sweep's runs.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mwp.config.schema import RunConfig
from mwp.data.artifact import distilled_problem
from mwp.digest import file_fingerprint
from mwp.stages.base import Stage, StageContext, StageInput

SIGNALS_DIR = "signals"


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a torch zip archive cut short by a full disk or a
    killed copy), or None: the archive's directory is read, not its tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        return (
            f"{path} is not a readable checkpoint ({err}); move it away to train from the start, or copy "
            "the best checkpoint of that folder in its place"
        )
    return None


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

    def check_inputs(self, config: RunConfig, context: StageContext) -> list[str]:
        problems = []
        if config.stage.data and not any(step in config.stage.steps for step in self.upstream):
            problem = distilled_problem(config.stage.data, "stage.data")
            problems += [problem] if problem else []
        if config.stage.resume:
            from mwp.student.fit import CHECKPOINT_DIR, LAST_CHECKPOINT

            last = Path(config.stage.resume) / CHECKPOINT_DIR / LAST_CHECKPOINT
            problem = checkpoint_problem(last) if last.exists() else None
            problems += [f"stage.resume: {problem}"] if problem else []
        return problems

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
            if "path" in signals:  # stored signals, built or reused in the stage cache
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
        name = student.get("name_or_path")
        if student.get("pretrained") == "never":  # the name only lends its config (and tokenizer)
            d_model = (student.get("size") or {}).get("d_model")
            name = f"random init (config of {name}{f', d_model {d_model}' if d_model else ''})"
        return f"{name}, {result.get('steps')} steps, seed {settings.get('seed')}"
