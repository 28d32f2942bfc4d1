"""In-context exemplars for evaluation: training-split problems with gold rationales, drawn by seed.

Fu et al. evaluate in-context formats with exemplars from the training data. Here the pool is the
training dataset's train split; every problem whose normalised question occurs anywhere in the
evaluation set is removed from it first (SVAMP rewrites ASDiv-A problems, MultiArith repeats
questions under new ids), so no evaluated question, under any id, is ever shown as an exemplar.
Each evaluated problem gets its own draw from a generator seeded by (seed, problem id): the same
problem sees the same exemplars whatever the limit, order or model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mwp.data.dedup import normalize_question
from mwp.data.formats import gold_rationale
from mwp.data.problem import Problem

__all__ = ["ExemplarPool", "gold_rationale"]


@dataclass(frozen=True)
class ExemplarPool:
    """(problem, rationale) pairs a set's exemplars are drawn from, with their normalised questions."""

    entries: tuple[tuple[Problem, str], ...]
    keys: tuple[str, ...]
    removed_overlap: int = 0

    @classmethod
    def build(cls, train: Sequence[Problem], evaluated: Sequence[Problem]) -> ExemplarPool:
        """Training problems with a gold rationale and a question that no evaluated problem has."""
        banned = {normalize_question(p.question) for p in evaluated}
        entries: list[tuple[Problem, str]] = []
        keys: list[str] = []
        removed = 0
        for problem in train:
            rationale = gold_rationale(problem)
            if rationale is None or problem.answer is None:
                continue
            key = normalize_question(problem.question)
            if key in banned:
                removed += 1
                continue
            entries.append((problem, rationale))
            keys.append(key)
        return cls(tuple(entries), tuple(keys), removed)

    def draw(self, problem: Problem, k: int, seed: int) -> list[tuple[Problem, str]]:
        """k distinct exemplars for `problem`, fixed by (seed, problem id), never the problem itself."""
        if k < 1:
            raise ValueError(f"evaluation.num_exemplars must be >= 1 for in-context formats, got {k}")
        own = normalize_question(problem.question)
        usable = [i for i, key in enumerate(self.keys) if key != own and self.entries[i][0].id != problem.id]
        if len(usable) < k:
            raise ValueError(
                f"{problem.id}: the exemplar pool has {len(usable)} usable problems, fewer than "
                f"evaluation.num_exemplars={k}"
            )
        rng = random.Random(f"{seed}|{problem.id}")
        return [self.entries[i] for i in rng.sample(usable, k)]
