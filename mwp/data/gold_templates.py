"""A dataset's own gold equation as a template over the problem's masked numbers N0..Nk.

The gold equations only ever measure (the semantic precision of kept templates, the simulated
teacher's answers); a weakly supervised run never trains on them.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from mwp.data.problem import Problem
from mwp.verify.equations import DEFAULT_CONSTANTS, equation_to_template
from mwp.verify.numbers import parse_number
from mwp.verify.safe_eval import EvaluationError
from mwp.verify.templates import canonical_infix, compile_template, verify_template

_UNKNOWN_SIDE = re.compile(r"^\s*\(?\s*[xX]\s*\)?\s*$")


def _gold_expression(equation: str) -> str | None:
    """The expression side of a dataset's gold equation: "X=((3.0+9.0)-10.0)", "12/4=3", "( 28.0 - 22.0 )"."""
    if ";" in equation or re.search(r"[A-WYZa-wyz]", equation):
        return None  # ASDiv's multi-step ("a; b"), remainder ("17/5=3 r2") and ratio formulas
    sides = equation.split("=")
    if len(sides) == 1:
        return sides[0]
    if len(sides) != 2:
        return None
    left, right = sides
    if _UNKNOWN_SIDE.match(left):
        return right
    if _UNKNOWN_SIDE.match(right):
        return left
    if parse_number(right) is not None:  # ASDiv writes the result on the right: "12/4=3"
        return left
    return None


def gold_template(problem: Problem, *, constants: Collection[str] = DEFAULT_CONSTANTS) -> str | None:
    """The dataset's own gold equation as a canonical template over the problem's masked numbers.

    SVAMP "( 28.0 - 22.0 )", MultiArith "X=((3.0+9.0)-10.0)", Math23K "x=28.4*1.4" and ASDiv "12/4=3"
    are mapped by `equation_to_template` onto `problem.numbers` (which `mwp.verify.masking` owns).
    None when the problem has no equation (GSM8K, Weak12K), when the equation uses a number that is
    neither a problem number nor an allowed constant, when it is not one expression, or when the
    template does not give the problem's answer (a fault of the data, e.g. Math23K 22085).
    """
    if not problem.equation or problem.answer is None:
        return None
    expression = _gold_expression(problem.equation)
    if expression is None:
        return None
    try:
        mapped = equation_to_template(expression, problem.numbers, constants=constants)
        template = compile_template(mapped)
    except EvaluationError:
        return None
    values = [parse_number(n) for n in problem.numbers]
    if not verify_template(template, values, problem.answer, constants=constants).ok:
        return None
    return canonical_infix(template)
