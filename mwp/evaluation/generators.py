"""The models the evaluate stage can score: the trained student, the configured teacher, any HF folder.

Each is a `Generator`: greedy completions for a batch of source texts, plus what the source builder
needs to know (a token counter when the model has a source length limit). The student (either kind,
through its `Codec`) and HF seq2seq folders decode with `generate`; the teacher and HF causal folders go
through the teacher backends (`Teacher.generate`), so an API teacher's cache and cost ledger work here
as in distilling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mwp.data.io import read_json
from mwp.progress import Progress
from mwp.student.codec import Codec, Seq2SeqCodec
from mwp.teachers.base import SamplingParams, Teacher, TeacherRequest
from mwp.teachers.usage import UsageLedger, teacher_usage

# Sources end with "Q: ... A:"; a continuation that opens a new question is cut there.
STOP_AT_NEXT_QUESTION = ("\nQ:",)


class Generator:
    """Greedy completions for source texts; `count_tokens`/`max_source_tokens` bound in-context sources."""

    label: str = "model"
    count_tokens: Callable[[str], int] | None = None
    max_source_tokens: int | None = None

    def complete(self, sources: Sequence[str], desc: str = "") -> list[str]:
        """One greedy completion per source, in order; `desc` labels the progress bar."""
        raise NotImplementedError

    def usage(self) -> UsageLedger | None:
        """The cost ledger of an API-backed model (None for local seq2seq models)."""
        return None

    def close(self) -> None:
        """Release the model or client."""


class StudentGenerator(Generator):
    """A student of either kind (`Codec`): prompts cut to `max_source_len` (a causal prompt loses its
    front, a T5 source its end), greedy `generate`, the new tokens decoded."""

    def __init__(
        self,
        label: str,
        model: Any,
        codec: Codec,
        *,
        batch_size: int,
        max_source_len: int | None,
        max_new_tokens: int,
    ) -> None:
        self.label = label
        self.model = model
        self.codec = codec
        self.tokenizer = codec.tokenizer
        self.batch_size = batch_size
        self.max_source_len = max_source_len
        self.max_new_tokens = max_new_tokens
        self.count_tokens = codec.count_source
        self.max_source_tokens = max_source_len

    @torch.no_grad()
    def complete(self, sources: Sequence[str], desc: str = "") -> list[str]:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        texts: list[str] = []
        bar = Progress(len(sources), desc or f"eval {self.label}", unit="problem")
        for start in range(0, len(sources), self.batch_size):
            chunk = list(sources[start : start + self.batch_size])
            prompts = {
                k: v.to(device) for k, v in self.codec.prompt_batch(chunk, self.max_source_len).items()
            }
            texts.extend(
                self.codec.complete(
                    self.model, prompts, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
                )
            )
            bar.update(len(chunk))
        bar.close()
        self.model.train(was_training)
        return texts


class TeacherGenerator(Generator):
    """A teacher backend prompted with the student's source text, one greedy completion each."""

    def __init__(self, label: str, teacher: Teacher, max_new_tokens: int) -> None:
        self.label = label
        self.teacher = teacher
        self.params = SamplingParams(
            n=1, temperature=0.0, max_tokens=max_new_tokens, stop=STOP_AT_NEXT_QUESTION
        )

    def complete(self, sources: Sequence[str], desc: str = "") -> list[str]:
        # The same problem is asked once per format: the request key is its position, the cache key the prompt.
        requests = [TeacherRequest(str(i), source) for i, source in enumerate(sources)]
        texts = [""] * len(requests)
        for response in self.teacher.generate(requests, self.params):
            if response.completions:
                texts[int(response.request.problem_id)] = response.completions[0].text
        return texts

    def usage(self) -> UsageLedger | None:
        return teacher_usage(self.teacher)

    def close(self) -> None:
        self.teacher.close()


def hf_folder_kind(path: str | Path) -> str:
    """ "seq2seq" or "causal", read from the folder's config.json (`is_encoder_decoder`)."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: no config.json (an `hf:` model must be a local model folder)")
    data = read_json(config)
    return "seq2seq" if data.get("is_encoder_decoder") else "causal"


def load_hf_folder(
    path: str, *, batch_size: int, max_source_len: int | None, max_new_tokens: int
) -> Generator:
    """An `hf:<path>` model: seq2seq folders decode like the student, causal ones through `HFTeacher`."""
    label = f"hf:{Path(path).expanduser().name}"
    if hf_folder_kind(path) == "seq2seq":
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        model = AutoModelForSeq2SeqLM.from_pretrained(Path(path).expanduser())
        tokenizer = AutoTokenizer.from_pretrained(Path(path).expanduser())
        return StudentGenerator(
            label,
            model,
            Seq2SeqCodec(tokenizer),
            batch_size=batch_size,
            max_source_len=max_source_len,
            max_new_tokens=max_new_tokens,
        )
    from mwp.teachers.hf import HFTeacher

    teacher = HFTeacher(str(Path(path).expanduser()), name=label, batch_size=batch_size)
    return TeacherGenerator(label, teacher, max_new_tokens)
