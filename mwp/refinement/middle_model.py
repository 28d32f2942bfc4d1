"""Middle-model search (From Large to Tiny's refinement): learn from the verified pairs, propose for the rest.

Each round fine-tunes a middle model on the current (problem, template) pairs in the equation format
with the student's own training (`mwp.student.fit.fit`: the same DataModule, Lightning module and
Trainer), decodes K candidate templates for every problem still failed (beam search or sampling),
keeps those that verify against the gold answer, and adds them to the pairs, so the next round's
middle model trains on them. It stops after `max_rounds` or when a round recovers nothing.

The middle model is its own model (`refine.middle_model.student`, any student option: a seq2seq T5 or
a causal LM, with LoRA or without; null = the run's student architecture). Lin et al. 2024 ("From
Large to Tiny", the Knowledge Refine stage) fine-tune a middle model on the successfully searched
pairs and search the unsuccessful ones with it, iteratively; which model, how long it trains, how it
decodes and how many rounds run are mwp's choices (the experiment configs say which).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mwp.config.schema import LossTerm, MiddleModelConfig, RunConfig, StudentConfig
from mwp.data.artifact import DistilledRow, write_distilled
from mwp.data.formats import equation_source
from mwp.data.problem import Problem
from mwp.evaluation.generators import StudentGenerator
from mwp.progress import Progress
from mwp.refinement.candidates import RoundStats, distinct_verified, recovered_row
from mwp.student.codec import Codec
from mwp.student.fit import fit
from mwp.student.model import is_adapter, load_student
from mwp.verify.templates import TemplateError, canonical_infix, from_prefix

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


class CandidateGenerator(StudentGenerator):
    """The evaluation generator, returning K decoded sequences per source instead of one greedy one."""

    def __init__(self, model: Any, codec: Codec, decoding: Decoding, max_source_len: int | None) -> None:
        super().__init__(
            "middle-model",
            model,
            codec,
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
            prompts = {
                k: v.to(device) for k, v in self.codec.prompt_batch(chunk, self.max_source_len).items()
            }
            kwargs: dict[str, Any] = {
                "do_sample": d.do_sample,
                "num_return_sequences": d.num_return_sequences,
            }
            if d.do_sample:
                kwargs.update(temperature=d.temperature, top_k=d.top_k, num_beams=1)
            else:
                kwargs.update(num_beams=d.num_beams)
            texts = self.codec.complete(self.model, prompts, max_new_tokens=self.max_new_tokens, **kwargs)
            k = d.num_return_sequences
            out.extend(texts[i * k : (i + 1) * k] for i in range(len(chunk)))
        bar.close()
        return out


def middle_model_config(config: RunConfig, settings: MiddleModelConfig) -> RunConfig:
    """The run's config with the middle model's student, training length and the equation format.

    Nothing is held out for validation (every verified pair is a training pair) and the loss is plain
    cross-entropy on the templates (the teacher's distributions belong to its rationales, not to them).
    Packing (`data.packing`) carries over to a causal middle model only.
    """
    student = settings.student if settings.student is not None else config.student
    data = config.data.model_copy(
        update={
            "packing": config.data.packing and student.known_kind() == "causal",
            "formats": ["equation"],
            "eval_format": "equation",
            "val_fraction": 0.0,
            "val_size": None,
            "batch_size": settings.batch_size,
            "batch_size_by_format": None,
            "max_source_len": "auto",
            "max_new_tokens": "auto",
        }
    )
    trainer = config.trainer.model_copy(
        update={
            "max_steps": settings.max_steps,
            "max_epochs": -1,
            "val_check_interval": None,
            "check_val_every_n_epoch": None,
        }
    )
    return config.model_copy(
        update={
            "student": student,
            "data": data,
            "trainer": trainer,
            "optim": config.optim.model_copy(update={"lr": settings.lr}),
            "loss": config.loss.model_copy(update={"terms": [LossTerm("ce")]}),
            "callbacks": {},
        }
    )


def middle_model_label(student: StudentConfig) -> str:
    """What the middle model is, for stats and tables: "middle model HuggingFaceTB/SmolLM2-135M-Instruct
    (pretrained, LoRA r=16)"."""
    name = student.gguf_package or student.name_or_path
    init = "random init" if student.pretrained == "never" else "pretrained"
    lora = f", LoRA r={student.peft.r}" if student.peft is not None and student.peft.enabled else ""
    return f"middle model {name} ({student.kind}, {init}{lora})"


def decoded_template(text: str, notation: str) -> str:
    """A decoded target back to an infix template (the equation format may train on prefix)."""
    if notation != "prefix":
        return text
    try:
        return canonical_infix(from_prefix(text))
    except TemplateError:
        return ""


class MiddleModelSearch:
    """Rounds of train-on-pairs / decode-for-failed / keep-what-verifies."""

    method = METHOD

    def __init__(
        self,
        config: RunConfig,
        settings: MiddleModelConfig,
        out_dir: Path,
        *,
        max_rounds: int,
        constants: Collection[str],
        max_per_problem: int = 1,
    ) -> None:
        self.config = middle_model_config(config, settings)
        self.source = middle_model_label(self.config.student)
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
        pairs = [row for row in kept if row.template is not None]
        remaining = {p.id: p for p in failed if p.answer is not None}
        notation = self.config.data.equation_notation
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
            round_config = self.config.model_copy(
                update={"paths": self.config.paths.model_copy(update={"output_dir": str(round_dir)})}
            )
            trained = fit(round_config, round_dir / PAIRS, round_dir)
            stats.train_s = time.perf_counter() - stats.started

            model, codec, _ = load_student(trained.student_dir)
            if is_adapter(model):
                model = model.merge_and_unload()  # decoding only: no adapter matmuls per token
            generator = CandidateGenerator(model, codec, self.decoding, max_source_len=None)
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
