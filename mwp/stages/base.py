"""What a stage is: one step of the pipeline, turning what the step before it wrote into a folder of its own.

`mwp.pipeline.run` loops over `stage.steps` and asks each stage object everything it needs: which
earlier stages it reads from (`upstream`), whether its inputs are usable (`check_inputs`), the settings that key its entry in the stage cache
(`key_settings`), how to compute the entry (`run`), the name of its link in the run folder
(`link`), which of its files make its W&B artifact (`artifact`, `artifact_files`), what
`summary.json` says of it (`summary`) and, for `mwp-cache ls`, a line on its result (`describe`).
The stage cache, the W&B lineage and the config check read these objects; none keeps a list of
its own. Adding a stage is one module here (a `Stage` subclass listed in `mwp.stages.STAGES`)
plus its config group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mwp.config.schema import RunConfig

if TYPE_CHECKING:  # stage objects are imported by the config check, which must not load lightning
    from lightning.pytorch.loggers import Logger


class StageError(RuntimeError):
    """A stage that ran but produced nothing usable (a distill that kept no sample); the message says
    why, what was tried and what to change. Nothing is published."""


@dataclass(frozen=True)
class StageInput:
    """What a stage reads: an upstream stage's output in this run, or an earlier run's given by path.

    `artifact` is its W&B artifact type (None when there is nothing to read) and `key` what identifies
    it in the reading stage's cache key: the upstream stage's key, or a fingerprint of the files.
    """

    path: Path | None = None
    artifact: str | None = None
    key: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a stage may use besides the config: the run folder and this run's services."""

    run_dir: Path
    cache_root: Path
    loggers: list[Logger] = field(default_factory=list)
    resume: bool = False
    # A rank > 0 of a multi-process launch: it trains beside rank 0 and writes nothing.
    worker: bool = False
    # `summary.json` records of work a stage did beside its own output (the train stage's signals).
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


class Stage(ABC):
    """One step of the pipeline. Subclasses set the class attributes and implement the two methods."""

    name: ClassVar[str]
    # Stages whose output this one reads, preferred first; when none of them ran, `given_input`.
    upstream: ClassVar[tuple[str, ...]] = ()
    # The W&B artifact type of the output, and the files of the output folder that make it.
    artifact: ClassVar[str]
    artifact_files: ClassVar[tuple[str, ...]] = ("*",)
    # The output's link in the run folder (defaults to the stage's name).
    link: ClassVar[str | None] = None
    # What ranks > 0 of a multi-process launch do: read the entry rank 0 wrote, run beside rank 0
    # (training), or skip the stage.
    on_worker: ClassVar[Literal["read", "run", "skip"]] = "read"

    @abstractmethod
    def key_settings(self, config: RunConfig) -> dict[str, Any]:
        """The settings that determine this stage's output (the keys of its inputs are added apart)."""

    @abstractmethod
    def run(self, config: RunConfig, source: StageInput, out: Path, context: StageContext) -> dict[str, Any]:
        """Write the output into `out` and return its result record (kept in the cache manifest)."""

    def check_inputs(self, config: RunConfig, context: StageContext) -> list[str]:
        """What is wrong with the files and settings this stage will read, one line each naming the
        file:line or key. The pipeline asks every stage it will compute before any W&B run, teacher
        call or model load, and reports every problem at once; reading must cost seconds at most."""
        return []

    def given_input(self, config: RunConfig, context: StageContext) -> StageInput:
        """What the stage reads when no upstream stage ran in this run (an earlier run's output)."""
        return StageInput()

    def output(self, entry: Path) -> Path:
        """The path the next stage reads: the entry folder, or a file in it."""
        return entry

    def external_inputs(self, config: RunConfig) -> list[tuple[str, Path]]:
        """Inputs from outside the pipeline, as (artifact type, path), for the W&B lineage."""
        return []

    def replay(self, entry: Path, context: StageContext) -> None:  # noqa: B027 (most stages have nothing to show)
        """Show an output that was reused as if it had been computed (metrics, tables)."""

    def summary(self, result: dict[str, Any], entry: Path) -> Any:
        """What `summary.json` says under the stage's name."""
        return result

    def describe(self, settings: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        """One line on an entry's result, from its manifest (`mwp-cache ls`)."""
        return ""

    @property
    def link_name(self) -> str:
        return self.link or self.name
