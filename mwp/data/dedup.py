"""Content identity of problems: one normalisation so that "the same question" means the same everywhere.

Ids alone do not separate datasets: SVAMP rewrites ASDiv-A and MAWPS problems, and MultiArith
repeats questions under new ids. Two problems whose questions normalise to the same text are
treated as one problem, e.g. when in-context exemplars are kept apart from evaluation problems.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^\w]+")


def normalize_question(text: str) -> str:
    """Case, width, punctuation and whitespace folded away: "Tom has 5 apples." == "tom has 5 apples"."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", folded).split())
