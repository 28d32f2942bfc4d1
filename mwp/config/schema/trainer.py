"""`trainer`: the Lightning Trainer's arguments."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from mwp.config.schema.base import Section, help_field

# T5 overflows in float16: these are refused with a message that says why.
FP16_PRECISIONS = ("16", "16-mixed", "16-true", "fp16", "transformer-engine-float16")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "64-true", "64", "transformer-engine")


class TrainerConfig(Section):
    """`lightning.pytorch.Trainer` arguments. The common ones are checked; the rest pass through."""

    target: str = help_field("lightning.pytorch.Trainer", alias="_target_", help="the Trainer class")
    accelerator: str = help_field("cpu", help="cpu, gpu, cuda, mps, auto")
    strategy: Any = help_field("auto", help="auto, ddp, fsdp, or a _target_ mapping of a strategy")
    devices: int | str | list[int] = help_field(1, help="devices per node (int, list, or 'auto')")
    num_nodes: int = help_field(1, ge=1, help="nodes")
    precision: str = help_field("32-true", help=f"one of {list(PRECISIONS)} (fp16 is refused: T5 overflows)")
    max_steps: int = help_field(300, help="optimizer steps (>= 1, or -1 to stop by max_epochs)")
    max_epochs: int | None = help_field(-1, help="epochs (-1 = no limit)")
    accumulate_grad_batches: int = help_field(1, ge=1, le=4096, help="micro-batches per optimizer step")
    gradient_clip_val: float | None = help_field(1.0, ge=0, help="gradient norm clip (null = none)")
    val_check_interval: int | float | None = help_field(
        100, help="validate every N micro-batches (or share of an epoch)"
    )
    check_val_every_n_epoch: int | None = help_field(
        None, help="validate every N epochs (null with step intervals)"
    )
    num_sanity_val_steps: int = help_field(0, ge=-1, help="validation batches before training")
    log_every_n_steps: int = help_field(10, ge=1, help="logging interval in steps", operational=True)
    deterministic: bool | str = help_field(False, help="torch deterministic algorithms")
    enable_progress_bar: bool = help_field(True, help="show a progress bar", operational=True)
    # Passed through unchecked; listed so that a misspelt key is still an error.
    min_epochs: Any = None
    min_steps: Any = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    overfit_batches: Any = 0.0
    gradient_clip_algorithm: Any = None
    benchmark: Any = None
    inference_mode: Any = True
    use_distributed_sampler: Any = True
    profiler: Any = None
    detect_anomaly: Any = False
    plugins: Any = None
    sync_batchnorm: Any = False
    enable_model_summary: Any = help_field(None, operational=True)

    @field_validator("precision", mode="before")
    @classmethod
    def _no_fp16(cls, value: Any) -> str:
        text = str(value)
        if text in FP16_PRECISIONS:
            raise ValueError("T5 overflows in float16; use 32-true or bf16-mixed")
        if text not in PRECISIONS:
            raise ValueError(f"not one of {list(PRECISIONS)}")
        return text

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(
                "train for >= 1 step (or -1 with max_epochs); 0 would evaluate an untrained student"
            )
        return value
