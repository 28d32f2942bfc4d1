"""Middle-model search (From Large to Tiny's refinement): learn from the verified pairs, propose for the rest.

Each round fine-tunes a middle model on the current (problem, template) pairs in the equation format
with the train stage itself (`mwp.stages.train.run_train`: the same DataModule, Lightning module and
Trainer), decodes K candidate templates for every problem still failed (beam search or sampling),
keeps those that verify against the gold answer, and adds them to the pairs, so the next round's
middle model trains on them. It stops after `max_rounds` or when a round recovers nothing.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mwp.data.artifact import DistilledRow, write_distilled
from mwp.data.datamodule import encode_padded
from mwp.data.problem import Problem
from mwp.evaluation.models import Seq2SeqGenerator
from mwp.progress import Progress
from mwp.refine.common import RoundStats, distinct_verified, recovered_row

log = logging.getLogger(__name__)

METHOD = "middle_model"
PAIRS = "pairs.jsonl"


@dataclass(frozen=True)
class Decoding:
    """How candidates are decoded: beam search (`do_sample=False`) or sampling, K = num_return_sequences."""

    num_beams: int = 5
    num_return_sequences: int = 5
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 48
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(
                "refine.middle_model.num_return_sequences must be <= num_beams for beam search "
                f"(got {self.num_return_sequences} > {self.num_beams}); raise num_beams or set do_sample=true"
            )


class CandidateGenerator(Seq2SeqGenerator):
    """The evaluation generator, returning K decoded sequences per source instead of one greedy one."""

    def __init__(self, model: Any, tokenizer: Any, decoding: Decoding, max_source_len: int | None) -> None:
        super().__init__(
            "middle-model",
            model,
            tokenizer,
            batch_size=decoding.batch_size,
            max_source_len=max_source_len,
            max_new_tokens=decoding.max_new_tokens,
        )
        self.decoding = decoding

    @torch.no_grad()
    def candidates(self, sources: Sequence[str]) -> list[list[str]]:
        d = self.decoding
        self.model.eval()
        device = next(self.model.parameters()).device
        out: list[list[str]] = []
        bar = Progress(len(sources), "refine middle model: decode", unit="problem")
        for start in range(0, len(sources), self.batch_size):
            chunk = list(sources[start : start + self.batch_size])
            bar.update(len(chunk))
            enc = encode_padded(self.tokenizer, chunk, self.max_source_len).to(device)
            kwargs: dict[str, Any] = {
                "do_sample": d.do_sample,
                "num_return_sequences": d.num_return_sequences,
            }
            if d.do_sample:
                kwargs.update(temperature=d.temperature, top_k=d.top_k, num_beams=1)
            else:
                kwargs.update(num_beams=d.num_beams)
            generated = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, **kwargs)
            texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            k = d.num_return_sequences
            out.extend(texts[i * k : (i + 1) * k] for i in range(len(chunk)))
        bar.close()
        return out


def middle_model_config(cfg: DictConfig, settings: DictConfig) -> DictConfig:
    """The run's config with the middle model's student, training length and the equation format.

    Nothing is held out for validation (every verified pair is a training pair) and the loss is plain
    cross-entropy on the templates (the teacher's distributions belong to its rationales, not to them).
    """
    middle = copy.deepcopy(cfg)
    with open_dict(middle):
        chosen = settings.student if settings.student is not None else cfg.student
        middle.student = OmegaConf.to_container(chosen, resolve=True)
        middle.data.formats = ["equation"]
        middle.data.eval_format = "equation"
        middle.data.val_fraction = 0.0
        middle.data.val_size = None
        middle.data.batch_size = settings.batch_size
        middle.data.batch_size_by_format = None
        middle.data.max_source_len = "auto"
        middle.data.max_new_tokens = "auto"
        middle.trainer.max_steps = settings.max_steps
        middle.trainer.max_epochs = -1
        middle.trainer.val_check_interval = None
        middle.trainer.check_val_every_n_epoch = None
        middle.optim.lr = settings.lr
        middle.loss.terms = [{"name": "ce", "weight": 1.0}]
        middle.callbacks = {}
    return middle


def decoded_template(text: str, notation: str) -> str:
    """A decoded target back to an infix template (the equation format may train on prefix)."""
    if notation != "prefix":
        return text
    from mwp.evaluation.equations import TemplateSyntaxError, prefix_to_infix

    try:
        return prefix_to_infix(text)
    except TemplateSyntaxError:
        return ""


class MiddleModelSearch:
    """Rounds of train-on-pairs / decode-for-failed / keep-what-verifies."""

    method = METHOD

    def __init__(
        self,
        cfg: DictConfig,
        settings: DictConfig,
        out_dir: Path,
        *,
        max_rounds: int,
        constants: Collection[str],
        max_per_problem: int = 1,
    ) -> None:
        self.cfg = middle_model_config(cfg, settings)
        self.decoding = Decoding(
            num_beams=settings.num_beams,
            num_return_sequences=settings.num_return_sequences,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_k=settings.top_k,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.decode_batch_size,
        )
        self.out_dir = out_dir
        self.max_rounds = max_rounds
        self.constants = tuple(constants)
        self.max_per_problem = max_per_problem

    def rounds(
        self, failed: Sequence[Problem], attempts: Mapping[str, str], kept: Sequence[DistilledRow]
    ) -> Iterator[tuple[RoundStats, list[DistilledRow]]]:
        del attempts  # the middle model learns from the verified pairs, not from the failed attempts
        from mwp.data.formats import equation_source
        from mwp.stages.evaluate import load_trained_student
        from mwp.stages.train import run_train

        pairs = [row for row in kept if row.template is not None]
        remaining = {p.id: p for p in failed if p.answer is not None}
        notation = str(self.cfg.data.get("equation_notation") or "infix")
        for round_index in range(1, self.max_rounds + 1):
            if not remaining:
                return
            if not pairs:
                log.warning("refine: no verified pairs to train the middle model on; nothing to search")
                return
            stats = RoundStats(method=METHOD, round=round_index, attempted=len(remaining))
            round_dir = self.out_dir / METHOD / f"round_{round_index}"
            round_dir.mkdir(parents=True, exist_ok=True)
            write_distilled(round_dir / PAIRS, pairs)
            with open_dict(self.cfg):
                self.cfg.paths.output_dir = str(round_dir)
            trained = run_train(self.cfg, round_dir, [], round_dir / PAIRS)
            stats.train_s = time.perf_counter() - stats.started

            model, tokenizer, _ = load_trained_student(trained.student_dir)
            generator = CandidateGenerator(model, tokenizer, self.decoding, max_source_len=None)
            problems = list(remaining.values())
            search_start = time.perf_counter()
            decoded = generator.candidates([equation_source(p) for p in problems])
            recovered: list[DistilledRow] = []
            for problem, texts in zip(problems, decoded, strict=True):
                stats.candidates += len(texts)
                candidates = [decoded_template(text, notation) for text in texts]
                templates = distinct_verified(problem, candidates, self.constants, self.max_per_problem)
                stats.verified_candidates += len(templates)
                for template in templates:
                    recovered.append(
                        recovered_row(
                            problem, template, method=METHOD, round_index=round_index, teacher=METHOD
                        )
                    )
                if templates:
                    del remaining[problem.id]
            stats.search_s = time.perf_counter() - search_start
            stats.recovered = len({row.id for row in recovered})
            pairs.extend(recovered)
            generator.close()
            yield stats.finish(len(remaining)), recovered
            if not recovered:
                return
