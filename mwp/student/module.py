"""LightningModule wrapping the Flan-T5 student: token-mean cross-entropy, AdamW with warmup/decay,
validation accuracy by greedy generation + answer extraction."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration, get_scheduler

from mwp.verify.compare import answers_match
from mwp.verify.extract import extract_answer
from mwp.verify.numbers import parse_number


class StudentModule(pl.LightningModule):
    def __init__(
        self,
        model: T5ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        *,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        scheduler: str = "linear",
        max_new_tokens: int = 128,
        hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {lr}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"optimizer.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.model = model
        self.tokenizer = tokenizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.scheduler_name = scheduler
        self.max_new_tokens = max_new_tokens
        self.save_hyperparameters(hparams or {}, ignore=["model", "tokenizer"])
        self._val_correct = 0
        self._val_total = 0

    # -- loss -------------------------------------------------------------------------------------
    def loss_terms(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-term token sums. Extra terms (e.g. KL to a teacher) plug in here."""
        labels = batch["labels"]
        ce_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        return {"ce": ce_sum}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        n_tokens = (batch["labels"] != -100).sum().clamp(min=1)
        terms = self.loss_terms(batch, logits)
        loss = sum(terms.values()) / n_tokens
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            self.log(f"train/{name}", value / n_tokens, batch_size=bs)
        return loss

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def on_validation_epoch_start(self) -> None:
        self._val_correct = 0
        self._val_total = 0

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        texts = self.generate(batch["input_ids"], batch["attention_mask"])
        for text, gold in zip(texts, batch["answers"], strict=True):
            pred = extract_answer(text, mode="flexible")
            self._val_correct += int(answers_match(pred, parse_number(gold)))
            self._val_total += 1

    def on_validation_epoch_end(self) -> None:
        acc = self._val_correct / self._val_total if self._val_total else 0.0
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "layer_norm" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_scheduler(
            self.scheduler_name,
            optimizer,
            num_warmup_steps=int(self.warmup_ratio * total),
            num_training_steps=total,
        )
        # Lightning steps an "interval: step" scheduler once per optimizer step, i.e. after accumulation.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
