"""Candidate verification rate: compiled templates against sympy, on real gold templates and perturbations.

    python benchmarks/bench_verify.py [--data-dir ../shared/data] [--candidates 200000] [--sympy 2000]

Candidates are (template, problem numbers, answer) triples: each Math23K-train and SVAMP problem's
gold template (`gold_template`) and perturbations of it (an operator changed, two placeholders
swapped, a constant changed, a placeholder out of range, a malformed spelling), so most candidates
fail as an enumeration search's would and templates repeat across problems as they do there.
Rates are single-process, single-thread, per CPU second (wall-clock rates beside them); all are
measured in this one run:

- cached: `verify_template` on template text, compiled templates cached by text (the search's case);
- cold:   every candidate parsed afresh (`_parse`, no cache), then verified;
- sympy:  the numbers substituted into the text, `sympy.sympify` and a comparison with the answer
          (on the first --sympy candidates; sympify is used here only on text this script generated);
- solve_equation: today's equation checker on "x=<substituted>" (same subset).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from fractions import Fraction
from pathlib import Path

from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.paths import default_data_dir
from mwp.verify.compare import answers_match
from mwp.verify.equations import solve_equation, template_to_equation
from mwp.verify.numbers import parse_number
from mwp.verify.safe_eval import EvaluationError
from mwp.verify.templates import _compile_cached, _parse, verify_template

Candidate = tuple[str, list[Fraction | None], Fraction, list[str]]


def _perturbations(template: str, n_numbers: int, rng: random.Random) -> list[str]:
    out = []
    for old, new in (("+", "-"), ("-", "+"), ("*", "/"), ("/", "*")):
        if old in template:
            out.append(template.replace(old, new, 1))
    if "N0" in template and "N1" in template:
        out.append(template.replace("N0", "#").replace("N1", "N0").replace("#", "N1"))
    out.append(f"({template})*2")
    out.append(f"{template}+{rng.choice(['1', '5', '100'])}")
    out.append(template.replace("N0", f"N{n_numbers}", 1))
    out.append(template + ")")
    return out


def build_candidates(data_dir: Path, count: int, seed: int = 0) -> list[Candidate]:
    rng = random.Random(seed)
    pool: list[Candidate] = []
    for name in ("math23k", "svamp"):
        for problem in load_problems(name, "train", data_dir):
            template = gold_template(problem)
            if template is None or problem.answer is None:
                continue
            values = [parse_number(n) for n in problem.numbers]
            for text in [template, *_perturbations(template, len(values), rng)]:
                pool.append((text, values, problem.answer, list(problem.numbers)))
    rng.shuffle(pool)
    return (pool * (count // len(pool) + 1))[:count]


class Clock:
    """Wall and CPU time of one measurement: on a shared machine the CPU time is what one core did."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def rate(label: str, count: int, clock: Clock) -> float:
    """Print and return the rate per CPU second (the wall-clock rate beside it)."""
    per_cpu_second = count / clock.cpu
    print(
        f"{label:<34}{count:>9} {clock.cpu:>8.2f} s cpu {per_cpu_second:>10,.0f}/s  (wall {count / clock.wall:,.0f}/s)"
    )
    return per_cpu_second


def bench_sympy(candidates: list[Candidate]) -> int:
    import sympy

    accepted = 0
    for text, _values, answer, numbers in candidates:
        try:
            expression = template_to_equation(text, numbers).replace("^", "**")
            value = sympy.sympify(expression)
            accepted += bool(
                value.is_Rational and answers_match(Fraction(int(value.p), int(value.q)), answer)
            )
        except (sympy.SympifyError, TypeError, ValueError, ZeroDivisionError, EvaluationError, SyntaxError):
            pass
    return accepted


def bench_solve(candidates: list[Candidate]) -> int:
    accepted = 0
    for text, _values, answer, numbers in candidates:
        with contextlib.suppress(EvaluationError):
            accepted += answers_match(solve_equation("x=" + template_to_equation(text, numbers)), answer)
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--candidates", type=int, default=200_000)
    parser.add_argument("--sympy", type=int, default=2000)
    args = parser.parse_args()
    candidates = build_candidates(args.data_dir or default_data_dir(), args.candidates)
    unique = len({c[0] for c in candidates})
    print(f"{len(candidates)} candidates, {unique} distinct templates")

    _compile_cached.cache_clear()
    with Clock() as clock:
        accepted = sum(verify_template(text, values, answer).ok for text, values, answer, _ in candidates)
    first_pass = rate("cached (cache filled on the way)", len(candidates), clock)
    with Clock() as clock:
        accepted_again = sum(
            verify_template(text, values, answer).ok for text, values, answer, _ in candidates
        )
    cached = rate("cached (warm)", len(candidates), clock)
    assert accepted == accepted_again

    cold_subset = candidates[: min(len(candidates), 50_000)]
    parse = _parse
    cold_accepted = 0
    with Clock() as clock:
        for text, values, answer, _ in cold_subset:
            with contextlib.suppress(EvaluationError):
                cold_accepted += verify_template(parse(text), values, answer).ok
    cold = rate("cold (parse every candidate)", len(cold_subset), clock)

    subset = candidates[: args.sympy]
    import sympy  # noqa: F401  (the import is not part of the rate)

    with Clock() as clock:
        sympy_accepted = bench_sympy(subset)
    sympy_rate = rate("sympy.sympify + compare", len(subset), clock)
    with Clock() as clock:
        solve_accepted = bench_solve(subset)
    solve_rate = rate("solve_equation + compare", len(subset), clock)
    ours_on_subset = sum(verify_template(t, v, a, constants=None).ok for t, v, a, _ in subset)
    print(
        f"accepted: {accepted}/{len(candidates)} (subset: templates {ours_on_subset}, "
        f"sympy {sympy_accepted}, solve_equation {solve_accepted}; sympy ignores the constant rule)"
    )
    print(
        f"ratio cached / sympy: {cached / sympy_rate:,.0f}x; cold / sympy: {cold / sympy_rate:,.0f}x; "
        f"cached / solve_equation: {cached / solve_rate:,.0f}x; first pass {first_pass:,.0f}/s"
    )


if __name__ == "__main__":
    main()
