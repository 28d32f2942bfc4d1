"""The names of Fu et al.'s four training formats, importable without torch or transformers."""

from __future__ import annotations

from typing import Literal, get_args

Format = Literal["zero_shot_cot", "zero_shot_answer", "in_context_cot", "in_context_answer"]
FORMATS: tuple[str, ...] = get_args(Format)
ANSWER_ONLY = frozenset({"zero_shot_answer", "in_context_answer"})
# Validation and test sources: no exemplars at test time.
EVAL_FORMATS: tuple[str, ...] = ("zero_shot_cot", "zero_shot_answer")
