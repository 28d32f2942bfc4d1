"""Is a predicted answer the gold answer? Exact rationals, with a tolerance only for stated roundings.

The rules, in order (`mwp-judge --help` prints the same list):

1. Equal rationals match ("0.375" and 3/8; "1,234" and 1234). Two different integers never match.
2. Float round-off: when either side is not an integer, values within a relative 1e-9 of each
   other match, so a float repr of the same value agrees with itself (0.6666666666666666 and
   0.6666666666666667; 1.8333333333333335 and 1.8333333333333333).
3. A rounded decimal: a prediction with d >= 1 decimal places (0.333, 3.3333333) may be a rounding
   of a gold that cannot be written with d places (1/3, 10/3). It matches when it is within its own
   stated precision (half a unit of the d-th place) and within max(rel_tol * max(|pred|, |gold|),
   abs_tol). A gold that can be written with d places is exact: 12.501 is not 12.5, 1250.62 is not
   1250.5, 3.0001 is not 3. The same holds the other way round only when the prediction is an exact
   non-terminating rational (1/3 against a gold written 0.3333333): an exact gold decimal is never
   treated as a rounding of a decimal prediction.
4. Percent: a gold written with "%" ("50%") matches both 1/2 and the figure 50 (`gold_matches`);
   a gold written without it ("0.5") matches only 1/2.

With the defaults 0.3333333 matches 1/3 (relative error 1e-7) and 0.333 does not (1e-3; pass
rel_tol=1e-3 to accept three decimals).
"""

from __future__ import annotations

from fractions import Fraction

from mwp.verify.numbers import PercentMode, parse_number

__all__ = ["answers_match", "decimal_places", "gold_matches"]


def decimal_places(value: Fraction) -> int | None:
    """The number of decimal places of a terminating decimal (0 for an integer), else None."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    return max(twos, fives) if den == 1 else None


# Float round-off: a float repr has ~16 significant digits, so 1e-9 cannot confuse real answers.
FLOAT_REL_TOL = Fraction(1, 10**9)


def _may_be_rounding_of(decimal: Fraction, other: Fraction) -> bool:
    """Can `decimal` be `other` rounded to the places it states (rule 3's first condition)?"""
    places = decimal_places(decimal)
    if places is None or places == 0:
        return False
    if (other * 10**places).denominator == 1:
        return False  # `other` is exact at that precision: no rounding happened
    return abs(decimal - other) <= Fraction(1, 2 * 10**places)


def answers_match(
    pred: Fraction | None, gold: Fraction | None, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6
) -> bool:
    """Exact equality, float round-off, or a prediction rounded to its stated places (module doc)."""
    if pred is None or gold is None:
        return False
    if pred == gold:
        return True
    difference = abs(pred - gold)
    scale = max(abs(pred), abs(gold))
    if (pred.denominator != 1 or gold.denominator != 1) and difference <= FLOAT_REL_TOL * scale:
        return True
    rounded = _may_be_rounding_of(pred, gold) or (
        decimal_places(pred) is None and _may_be_rounding_of(gold, pred)
    )
    return rounded and difference <= max(Fraction(rel_tol) * scale, Fraction(abs_tol))


def gold_matches(
    pred: Fraction | None,
    answer: str | int | float | Fraction | None,
    *,
    rel_tol: float = 1e-4,
    abs_tol: float = 1e-6,
) -> bool:
    """Does `pred` answer a gold `answer` given as a dataset spells it ("9 (apples)", "3/4", "50%")?

    A percent gold answer "50%" is 1/2, and the prediction 50 also counts as correct: a model asked
    for a percentage rightly answers with the percentage figure.
    """
    if isinstance(answer, Fraction):
        return answers_match(pred, answer, rel_tol=rel_tol, abs_tol=abs_tol)
    candidates = [parse_number(answer, percent="fraction")]
    if isinstance(answer, str) and "%" in answer:
        mode: PercentMode = "strip"
        candidates.append(parse_number(answer, percent=mode))
    return any(answers_match(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol) for gold in candidates)
