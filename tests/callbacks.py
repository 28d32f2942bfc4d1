"""Callbacks the tests plug in through the `callbacks` config group (`+callbacks.NAME._target_=...`)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    """SIGKILL this process when optimizer step `step` is done (its checkpoint already written),
    as a pre-empted or OOM-killed job dies: no exception, no cleanup, no final save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and batch_idx % trainer.accumulate_grad_batches == 0:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveFirstGradients(pl.Callback):
    """Write the first optimizer step's gradients (after DDP's all-reduce, before clipping) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            import torch

            grads = {
                n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }
            torch.save(grads, self.path)
