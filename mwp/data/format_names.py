"""The names of the student's training formats, importable without torch or transformers.

Fu et al.'s four ({zero-shot, in-context} x {chain-of-thought, answer-only}) and From Large to Tiny's
`equation`: a masked problem (numbers as N0..Nk) -> a masked equation (template) over the same N0..Nk.
"""

from __future__ import annotations

from typing import Literal, get_args

Format = Literal["zero_shot_cot", "zero_shot_answer", "in_context_cot", "in_context_answer", "equation"]
FORMATS: tuple[str, ...] = get_args(Format)
ANSWER_ONLY = frozenset({"zero_shot_answer", "in_context_answer"})
EQUATION = "equation"
# Validation and test sources: no exemplars at test time.
EVAL_FORMATS: tuple[str, ...] = ("zero_shot_cot", "zero_shot_answer", EQUATION)
EquationNotation = Literal["infix", "prefix"]
EQUATION_NOTATIONS: tuple[str, ...] = get_args(EquationNotation)
