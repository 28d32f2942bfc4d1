"""LightningModule wrapping the student (Flan-T5 or a causal LM, through its `Codec`): the configured loss terms (cross-entropy, optionally
KL/JSD to a teacher's per-token distributions), AdamW with warmup/decay, validation accuracy by
greedy generation + answer extraction (`val_extraction`, strict by default: the checkpoint is chosen
on the same reading of answers as the headline test accuracy and distillation's filter), or, for
validation in the equation format, the generated template scored with the problem's numbers.

Every term is a token mean over the whole optimizer step: a batch from `DistilledDataModule`
carries its accumulation window's token counts, which are all-reduced over ranks; each
micro-batch's loss is its token sum over that global count, and the returned loss is multiplied
by `accumulate_grad_batches` × world size (which Lightning's accumulation and DDP's gradient
averaging divide back out), so any split over micro-batches and devices gives the gradient of
one big batch exactly.

A signal source may replace a batch's targets (`SignalSource.targets`): on an on-policy step
(`mwp.signals.on_policy`) the student trains on its own samples, the distillation terms only, and
each micro-batch divides by its own token count all-reduced over ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from mwp.config.schema.loss_terms import LossTerm
from mwp.signals import SignalSource, SparseBatch
from mwp.signals.on_policy import ON_POLICY_KEY
from mwp.signals.positions import COT_ROWS_KEY
from mwp.signals.types import BATCH_KEYS
from mwp.student.codec import Codec, codec_for
from mwp.student.losses import combine, count_tokens, term_count_key
from mwp.verify.compare import answers_match
from mwp.verify.extract import extract_answer
from mwp.verify.numbers import parse_number
from mwp.verify.template_scoring import score_template


class StudentModule(pl.LightningModule):
    """The student and its training loss.

    Give it a built `model` and `tokenizer`, or a `student` config (`conf/student/*.yaml` as a dict)
    to build them from: that config, the optimiser settings and the loss terms are saved as
    hyperparameters, so `StudentModule.load_from_checkpoint(path)` rebuilds the module on its own.
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        codec: Codec | None = None,
        student: dict[str, Any] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        weight_decay_on: str = "matrices",
        warmup_ratio: float = 0.05,
        warmup_steps: int | None = None,
        scheduler: str = "linear",
        schedule_length: str = "optimizer_steps",
        max_new_tokens: int = 128,
        val_extraction: str = "strict",
        terms: Sequence[LossTerm | dict[str, Any]] | None = None,
        signal_source: SignalSource | None = None,
    ) -> None:
        super().__init__()
        if model is None or tokenizer is None:
            if student is None:
                raise ValueError(
                    "StudentModule needs a model and tokenizer, or a student config to build them"
                )
            from hydra.utils import instantiate

            bundle = instantiate(student, _convert_="all")
            model, tokenizer, codec = bundle.model, bundle.tokenizer, bundle.codec
        self.model = model
        self.tokenizer = tokenizer
        # How text becomes this student's tensors (seq2seq or causal); a plain object, not a child module.
        self.codec = codec if codec is not None else codec_for(model, tokenizer)
        self.lr = lr
        self.weight_decay = weight_decay
        if weight_decay_on not in ("matrices", "all"):
            raise ValueError(f"optim.weight_decay_on must be matrices or all, got {weight_decay_on!r}")
        self.weight_decay_on = weight_decay_on
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        self.scheduler_name = scheduler
        if schedule_length not in ("optimizer_steps", "micro_batches"):
            raise ValueError(
                f"optim.schedule_length must be optimizer_steps or micro_batches, got {schedule_length!r}"
            )
        self.schedule_length = schedule_length
        self.max_new_tokens = max_new_tokens
        if val_extraction not in ("strict", "flexible"):
            raise ValueError(
                f"evaluation.select_extraction must be strict or flexible, got {val_extraction!r}"
            )
        self.val_extraction = val_extraction
        given = list(terms) if terms is not None else [LossTerm("ce")]
        self.terms = [t if isinstance(t, LossTerm) else LossTerm.from_config(t) for t in given]
        if not self.terms:
            raise ValueError("loss.terms is empty: the training loss needs at least one term")
        if signal_source is not None:
            signal_source.attach(model, self.codec)
        # A plain object, not a child module: a teacher it holds is not trained, checkpointed or in state_dict.
        self.signal_source = signal_source
        self.save_hyperparameters(
            {
                "student": student,
                "lr": lr,
                "weight_decay": weight_decay,
                "weight_decay_on": weight_decay_on,
                "warmup_ratio": warmup_ratio,
                "warmup_steps": warmup_steps,
                "scheduler": scheduler,
                "schedule_length": schedule_length,
                "max_new_tokens": max_new_tokens,
                "val_extraction": val_extraction,
                "terms": [asdict(t) for t in self.terms],
            }
        )
        self._val_correct = 0
        self._val_total = 0

    # -- loss -------------------------------------------------------------------------------------
    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """`[B, T, V]` logits of the target positions, aligned with `batch["labels"]` (either kind)."""
        return self.codec.logits(self.model, batch)

    def _step_counts(
        self, batch: dict[str, Any], terms: Sequence[LossTerm], teacher: Any
    ) -> dict[str, torch.Tensor] | None:
        """Each term's token count over the whole optimizer step: this window's counts, all ranks.

        A batch of the student's own samples (`on_policy`) has no precomputed window: its count is
        this micro-batch's, all-reduced, times the micro-batches per step, so each micro-batch of an
        on-policy window weighs equally (exact token means over devices, not over micro-batches).
        """
        # Window counts of teacher-covered tokens exist for a sparse signal the collator put in the
        # batch; one a source builds at training time (a dense teacher's top-k) covers every label.
        sparse = isinstance(teacher, SparseBatch) and BATCH_KEYS[0] in batch
        accumulate = self.trainer.accumulate_grad_batches
        if batch.get(ON_POLICY_KEY):
            local = count_tokens(terms, batch["labels"], teacher, batch.get(COT_ROWS_KEY))
            keys = list(local)
            stacked = torch.stack([local[k] for k in keys]).to(self.device, torch.float64)
            total = self.trainer.strategy.reduce(stacked, reduce_op="sum")
            return {key: total[i] * accumulate for i, key in enumerate(keys)}
        window = batch.get("window_n_tokens")
        if window is None:
            return None
        if batch.get("accumulate") != accumulate:
            raise ValueError(
                f"batches were grouped for {batch.get('accumulate')} micro-batches per step, but "
                f"trainer.accumulate_grad_batches={accumulate}: use the DataModule's train_dataloader"
            )
        keys = sorted(window)
        stacked = torch.stack([torch.as_tensor(window[k]) for k in keys]).to(self.device, torch.float64)
        # One all-reduce of a few numbers per micro-batch: every rank divides by the global count.
        total = self.trainer.strategy.reduce(stacked, reduce_op="sum")
        counts = dict(zip(keys, total, strict=True))
        out: dict[str, torch.Tensor] = {}
        for term in terms:
            key = term_count_key(term, sparse)
            if key not in counts:
                raise ValueError(
                    f"loss.terms {term.name!r} divides by window count {key!r}, which the batches do not carry "
                    f"(they have {keys}): build batches with the DataModule's train_dataloader"
                )
            out[term.name] = counts[key]
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        source = self.signal_source
        if source is not None:
            # The source may swap the dataset targets for the student's own samples (on-policy).
            batch = source.targets(batch, self.model, self.trainer.global_step)
        terms = self.terms
        if batch.get(ON_POLICY_KEY):
            # Cross-entropy on the student's own samples would only reinforce them.
            terms = [t for t in self.terms if t.needs_teacher]
        logits = self(batch)
        teacher = source.signal(batch) if self.needs_teacher and source is not None else None
        step_counts = self._step_counts(batch, terms, teacher)
        combined = combine(
            terms,
            logits,
            batch["labels"],
            teacher,
            global_n_tokens=step_counts,
            cot_rows=batch.get(COT_ROWS_KEY),
        )
        loss = combined.total
        if step_counts is not None:
            # Lightning divides the returned loss by accumulate_grad_batches and DDP averages
            # gradients over ranks; the step's token mean is already exact, so undo both.
            loss = loss * (self.trainer.accumulate_grad_batches * self.trainer.world_size)
        bs = batch["labels"].shape[0]  # examples, not rows: a packed batch has fewer rows
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log("train/on_policy", float(bool(batch.get(ON_POLICY_KEY))), batch_size=bs)
        for name, part in combined.parts.items():
            # Logged as this micro-batch's own token mean, whatever denominator the gradient used.
            local = combined.n_tokens[name]
            if int(local) == 0:
                continue  # e.g. a batch of answer-only targets has nothing to say about a KL term
            value = part * step_counts[name].to(part.dtype).clamp(min=1) / local if step_counts else part
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def on_fit_start(self) -> None:
        # `from_pretrained` returns a model in eval mode, and Lightning keeps the modes it finds: without
        # this a pretrained student (or its LoRA adapters) would train with dropout off.
        self.model.train()

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        prompts = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.codec.complete(
            self.model, prompts, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
        )

    def on_validation_epoch_start(self) -> None:
        self._val_correct = 0
        self._val_total = 0

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        texts = self.generate(batch["input_ids"], batch["attention_mask"])
        numbers = batch.get("numbers")
        for index, (text, gold) in enumerate(zip(texts, batch["answers"], strict=True)):
            if numbers is not None:  # the equation format: a template over the problem's numbers
                score = score_template(text, numbers[index], parse_number(gold), notation=batch["notation"])
                correct = score.correct
            else:
                correct = answers_match(extract_answer(text, mode=self.val_extraction), parse_number(gold))
            self._val_correct += int(correct)
            self._val_total += 1

    def on_validation_epoch_end(self) -> None:
        # Summed over ranks before dividing: shards of different sizes weigh by their problems.
        counts = torch.tensor([self._val_correct, self._val_total], dtype=torch.float64, device=self.device)
        correct, total = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        self.log("val/acc", correct / total if total else 0.0, prog_bar=True)

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            exempt = self.weight_decay_on == "matrices" and (param.ndim < 2 or "norm" in name)
            (no_decay if exempt else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.weight_decay}]
        if self.weight_decay_on == "matrices":
            groups.append({"params": no_decay, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * steps)
        # Fu et al. size the schedule in micro-batches but step it per optimizer step
        # (train_distill_simple.py@02dec73:107-116,168-170): under accumulation a it only covers about
        # 1/a of its length, so a cosine ends near 0.5 * (1 + cos(pi / a)) instead of 0. They trained one
        # replica, so their micro-batches are counted over every data-parallel device here: the same
        # global batch on N devices (accumulation a / N) decays as theirs did.
        length = steps
        if self.schedule_length == "micro_batches":
            length = steps * self.trainer.accumulate_grad_batches * self.trainer.world_size
        scheduler = get_scheduler(
            self.scheduler_name, optimizer, num_warmup_steps=warmup, num_training_steps=length
        )
        # Lightning steps an "interval: step" scheduler once per optimizer step, i.e. after accumulation.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
