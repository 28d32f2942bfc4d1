"""Is a predicted answer the gold answer? Exact rationals, with a tolerance only for rounded decimals.

The rule: two values match when they are equal. When they differ and one side is a terminating
decimal with d >= 1 decimal places (0.333, 3.3333333) while the other cannot be written with d
decimal places (1/3, 10/3), the decimal may be a rounding of it, and they match when
|pred - gold| <= max(rel_tol * max(|pred|, |gold|), abs_tol).

So with the defaults 0.3333333 matches 1/3 (relative error 1e-7), 0.333 does not (1e-3; pass
rel_tol=1e-3 to accept three decimals), 3 never matches 4, and 3.0001 never matches 3 (3 can be
written with four decimals, so 3.0001 is not a rounding of it).
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


def _may_be_rounding_of(decimal: Fraction, other: Fraction) -> bool:
    places = decimal_places(decimal)
    if places is None or places == 0:
        return False
    return (other * 10**places).denominator != 1


def answers_match(
    pred: Fraction | None, gold: Fraction | None, *, rel_tol: float = 1e-4, abs_tol: float = 1e-6
) -> bool:
    """Exact equality, or closeness within tolerance when one side is a rounded decimal (see module doc)."""
    if pred is None or gold is None:
        return False
    if pred == gold:
        return True
    if not (_may_be_rounding_of(pred, gold) or _may_be_rounding_of(gold, pred)):
        return False
    difference = abs(pred - gold)
    scale = max(abs(pred), abs(gold))
    return difference <= max(Fraction(rel_tol) * scale, Fraction(abs_tol))


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
