"""Checking answers: exact numbers, answer extraction, safe arithmetic, equations, comparison."""

from mwp.verify.compare import answers_match, gold_matches
from mwp.verify.equations import (
    DEFAULT_CONSTANTS,
    EquationError,
    NumberMappingError,
    equation_to_template,
    solve_equation,
    template_to_equation,
)
from mwp.verify.extract import cut_run_on, extract_answer, extract_answer_span
from mwp.verify.masking import MaskedQuestion, mask_question, number_spans
from mwp.verify.numbers import find_numbers, format_number, parse_number
from mwp.verify.safe_eval import EvaluationError, UnsafeExpressionError, safe_eval
from mwp.verify.templates import (
    Template,
    TemplateError,
    Verification,
    canonical_infix,
    compile_template,
    equivalent,
    from_prefix,
    to_prefix,
    verify_template,
)

__all__ = [
    "DEFAULT_CONSTANTS",
    "EquationError",
    "EvaluationError",
    "MaskedQuestion",
    "NumberMappingError",
    "Template",
    "TemplateError",
    "UnsafeExpressionError",
    "Verification",
    "answers_match",
    "canonical_infix",
    "compile_template",
    "cut_run_on",
    "equation_to_template",
    "equivalent",
    "extract_answer",
    "extract_answer_span",
    "find_numbers",
    "format_number",
    "from_prefix",
    "gold_matches",
    "mask_question",
    "number_spans",
    "parse_number",
    "safe_eval",
    "solve_equation",
    "template_to_equation",
    "to_prefix",
    "verify_template",
]
