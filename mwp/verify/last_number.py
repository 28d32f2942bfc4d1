"""Fu et al. (2023)'s accuracy, the metric of their tables: the completion's last number against the gold's.

Their `test_answer` (FranxYao/FlanT5-CoT-Specialization, `src/utils.py@65fbc2a:346-359`) reads the runs
of `\\d*\\.?\\d+` in the prediction and in the gold text and compares the last of each as floats. It
knows no thousands separators ("1,080" reads as 080, on either side) and no signs ("-3" reads as 3),
and a completion with no number is wrong. Their scores are re-read from a text file of
`Q: …`, `A_model:`, `A:` records (`test_distill_multiple.py@d4911c8:121`, `parse_pred_ans` in
`src/utils.py@65fbc2a:444-489`), so a completion ends where one of its lines starts a new record.

This is the paper's metric, reported beside mwp's strict headline (`evaluation.paper_metric`), never
instead of it: "the last number" credits a completion that hedges or runs on into another problem.
"""

from __future__ import annotations

import re
from fractions import Fraction

from mwp.verify.numbers import format_number

# Their number pattern: no sign, no thousands separators, an optional decimal part.
_NUMBER = re.compile(r"\d*\.?\d+")
# Lines that start a new record in their evaluation file.
_RECORD_STARTS = ("Q: ", "A_model:", "A:")


def completion_as_read(completion: str) -> str:
    """The completion as their evaluation file gives it back: up to the first line that starts a record."""
    kept: list[str] = []
    for line in completion.splitlines():
        if line.startswith(_RECORD_STARTS):
            break
        kept.append(line)
    return "\n".join(kept)


def last_number(text: str) -> str | None:
    """The last run of `\\d*\\.?\\d+` in `text` (None without one)."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def last_number_correct(completion: str, gold_text: str, gold: Fraction | None = None) -> bool:
    """Whether the completion's last number equals the gold text's as a float (their `test_answer`).

    `gold_text` is the dataset's own spelling of the answer (GSM8K's text after `####`); when it holds
    no number, `gold` (the parsed answer) is spelt instead, and without either nothing is correct.
    """
    predicted = last_number(completion_as_read(completion))
    if predicted is None:
        return False
    reference = last_number(gold_text)
    if reference is None and gold is not None:
        reference = last_number(format_number(gold) or "")
    return reference is not None and float(predicted) == float(reference)
