"""Stage outputs as W&B Artifacts, with lineage teacher samples → distilled → refined → student → predictions.

After a stage, the pipeline calls `log_stage_artifact(loggers, output, inputs=[...])` with the
stage's `ArtifactFiles` (the stage object says its artifact type and which of its files make it):
the files become an artifact of that type, named `<type>-<key>` (the stage's cache key when it has
one, else a hash of the files), and each input is marked used by the run, which is what draws the
lineage graph. Works offline: the artifact records go into the offline run and
`wandb sync` uploads them. Files are not copied: small ones are uploaded from the run folder at sync
time (keep it until then), large ones (the student's weights) are recorded as `file://` references
with their checksum only.

One run both producing and consuming an artifact would loop in the graph, so inputs this run
logged itself are not marked used; every artifact's metadata lists its inputs by name either way.
Run the stages as separate jobs (stage=distill, then stage=train stage.data=..., ...) to see the
chain as runs in W&B.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from mwp.digest import content_digest

log = logging.getLogger(__name__)

# Statistics beside the data: metadata, so they do not change the artifact's content digest.
_STATS = "stats.json"
# Files above this size are referenced (file://, checksum only), not uploaded.
REFERENCE_BYTES = 10 * 2**20

# Artifact names each W&B run (by id) has logged: those are its outputs, not inputs to mark used.
_LOGGED: dict[str, set[str]] = {}


@dataclass(frozen=True)
class ArtifactFiles:
    """Where a stage output is (a folder, or one file) and which of a folder's files make its artifact."""

    kind: str
    path: Path
    files: tuple[str, ...] = ("*",)
    key: str | None = None


@dataclass(frozen=True)
class StageOutput:
    """The files of one stage output, and the artifact name they go under."""

    stage: str
    files: tuple[Path, ...]
    key: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.key}"


def stage_output(spec: ArtifactFiles) -> StageOutput | None:
    """The output `spec` names (a folder or one file); None when there is nothing there."""
    path = Path(spec.path)
    if path.is_file():
        files = [path]
        folder = path.parent
    elif path.is_dir():
        folder = path
        files = sorted({f for pattern in spec.files for f in path.glob(pattern) if f.is_file()})
    else:
        return None
    if not files:
        return None
    metadata: dict[str, Any] = {"path": str(path.resolve())}
    stats = folder / _STATS
    if spec.kind in ("distilled", "refined") and stats.is_file():
        metadata["stats"] = json.loads(stats.read_text(encoding="utf-8"))
    resolved = tuple(f.resolve() for f in files)
    return StageOutput(spec.kind, resolved, spec.key or content_key(resolved), metadata)


def content_key(files: Sequence[Path]) -> str:
    """12 hex digits of a SHA-256 over the files' names and contents (order-independent)."""
    return content_digest((p.name, p) for p in sorted(files, key=lambda p: p.name))[:12]


def log_stage_artifact(
    loggers: Sequence[Logger], produced: ArtifactFiles, inputs: Sequence[ArtifactFiles] = ()
) -> str | None:
    """Log `produced` as this run's artifact of its kind, marking `inputs` used.

    Returns the artifact name, or None when no W&B run is active or there is nothing at its path.
    """
    runs = [run for run in (_wandb_run(lg) for lg in loggers) if run is not None]
    if not runs:
        return None
    output = stage_output(produced)
    if output is None:
        log.warning("no %s files in %s: no W&B artifact logged", produced.kind, produced.path)
        return None
    used = [out for out in (stage_output(spec) for spec in inputs) if out is not None]
    for run in runs:
        logged = _LOGGED.setdefault(run.id, set())
        for item in used:
            if item.name not in logged:
                _use(run, _artifact(item, inputs=[]))
        artifact = _artifact(output, inputs=[item.name for item in used])
        run.log_artifact(artifact)
        logged.add(output.name)
    log.info("W&B artifact %s (%s) from %s", output.name, produced.kind, produced.path)
    return output.name


def _wandb_run(logger: Logger) -> Any | None:
    if not isinstance(logger, WandbLogger):
        return None
    run = logger.experiment
    settings = getattr(run, "settings", None)
    if settings is None or getattr(settings, "mode", None) == "disabled" or getattr(run, "disabled", False):
        return None
    return run


def _artifact(output: StageOutput, inputs: list[str]) -> Any:
    import wandb

    artifact = wandb.Artifact(
        output.name, type=output.stage, metadata={**output.metadata, "key": output.key, "inputs": inputs}
    )
    for path in output.files:
        if path.stat().st_size > REFERENCE_BYTES:
            artifact.add_reference(path.as_uri(), name=path.name)
        else:
            # "immutable": uploaded from where it is at sync time, not copied to W&B's staging area
            artifact.add_file(str(path), name=path.name, policy="immutable")
    return artifact


def _use(run: Any, artifact: Any) -> None:
    """Mark a (draft) artifact used by the run: logged if W&B does not have it yet, then used."""
    if not run.settings._offline:
        run.use_artifact(artifact)
        return
    # W&B refuses use_artifact offline; this is the call use_artifact makes for a draft artifact, and
    # `wandb sync` replays it (commit, then use) like any other record of the offline run.
    run._log_artifact(artifact, use_after_commit=True)
