"""A simulated teacher: answers the equation chain's prompts from a dataset's hidden gold equations.

It is a simulation, never a model: its `name` says so ("simulated(math23k-gold, p_err=0.30)") and
every artifact and log line carries that name. Each answer starts from the problem's gold equation
(`Problem.equation`) and, with the configured per-step rates, is spoiled the way real teachers spoil
equations: a wrong operator, two numbers swapped, a wrong number, a malformed equation that does not
parse, a refusal, or a plausible but wrong equation over the problem's numbers. The format-correction
steps repair a malformed equation, or a malformed masked equation over N0..Nk, at `repair_rate`. Every draw is seeded by (seed, task, problem id,
sample index, prompt), so a rerun answers identically whatever the order or batch of the requests.

Configuration: conf/teacher/simulated.yaml; which step a request is comes from `TeacherRequest.task`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.teachers.base import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
)
from mwp.teachers.completion_cache import stable_seed
from mwp.teachers.prompts import clean_equation
from mwp.verify.equation_checks import equation_parses
from mwp.verify.numbers import format_number, parse_number
from mwp.verify.safe_eval import EvaluationError, Token, render_tokens, safe_eval, tokenize
from mwp.verify.templates import TemplateError, compile_template

ERROR_KINDS: tuple[str, ...] = (
    "wrong_operator",
    "swapped_numbers",
    "wrong_number",
    "malformed",
    "refusal",
    "plausible_wrong",
)
STEPS: tuple[str, ...] = ("equation", "masked_equation", "feedback")
REFUSALS = {
    "en": "I'm sorry, I cannot write an equation for this problem.",
    "zh": "抱歉，我无法为这道题列出方程。",
}
_OPERATORS = ("+", "-", "*", "/")
# One-character repairs are tried on at most this much text (each candidate is parsed once).
MAX_REPAIR_CHARS = 400
# Placeholders are spoiled as numbers N<k> -> 90000+k (no problem number is near that in the datasets).
_STAND_IN = 90000


def error_profile(rates: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """Per-step error rates, every kind present; raises ValueError naming a bad step, kind or rate."""
    profile = {step: dict.fromkeys(ERROR_KINDS, 0.0) for step in STEPS}
    for step, kinds in (rates or {}).items():
        if step not in profile:
            raise ValueError(f"teacher.errors.{step}: unknown step; steps: {list(STEPS)}")
        for kind, rate in (kinds or {}).items():
            if kind not in ERROR_KINDS:
                raise ValueError(
                    f"teacher.errors.{step}.{kind}: unknown error kind; kinds: {list(ERROR_KINDS)}"
                )
            if not 0 <= float(rate) <= 1:
                raise ValueError(f"teacher.errors.{step}.{kind}={rate}: a rate must be in [0, 1]")
            profile[step][kind] = float(rate)
        total = sum(profile[step].values())
        if total > 1 + 1e-9:
            raise ValueError(f"teacher.errors.{step}: the rates add up to {total:.3f} > 1")
    return profile


def _draw_error(rng: random.Random, rates: Mapping[str, float]) -> str | None:
    u = rng.random()
    for kind in ERROR_KINDS:
        u -= rates[kind]
        if u < 0:
            return kind
    return None


def _render(tokens: Sequence[Token]) -> str:
    return render_tokens(list(tokens))


def _binary_operators(tokens: Sequence[Token]) -> list[int]:
    return [
        i
        for i, t in enumerate(tokens)
        if t.kind == "op"
        and t.text in _OPERATORS
        and i > 0
        and tokens[i - 1].kind in ("num", "name", ")", "pct")
    ]


def _numbers(tokens: Sequence[Token]) -> list[int]:
    return [i for i, t in enumerate(tokens) if t.kind == "num"]


def _replace(tokens: list[Token], i: int, text: str) -> list[Token]:
    out = list(tokens)
    out[i] = Token(tokens[i].kind, text, None)
    return out


def _value(expression: str) -> Fraction | None:
    try:
        return safe_eval(expression)
    except EvaluationError:
        return None


# Draws of one error kind tried for one that changes the value ("3+4" swapped is still 7).
_SPOIL_DRAWS = 8


def _spoil(expression: str, kind: str, rng: random.Random, numbers: Sequence[str]) -> str:
    """`expression` (the right side of "x=...", with numbers) spoiled by one error `kind`: the first of
    a few draws that changes its value, so that an error rate is a rate of wrong equations."""
    if kind in ("malformed", "refusal"):
        return _spoil_once(expression, kind, rng, numbers)
    gold = _value(expression)
    spoiled = expression
    for _ in range(_SPOIL_DRAWS):
        spoiled = _spoil_once(expression, kind, rng, numbers)
        if _value(spoiled) != gold:
            break
    return spoiled


def _spoil_once(expression: str, kind: str, rng: random.Random, numbers: Sequence[str]) -> str:
    tokens = tokenize(expression)
    operators, literals = _binary_operators(tokens), _numbers(tokens)
    if kind == "swapped_numbers" and len(literals) < 2:
        kind = "wrong_operator"
    if kind == "wrong_operator" and not operators:
        kind = "wrong_number"
    if kind == "wrong_operator":
        i = rng.choice(operators)
        tokens = _replace(tokens, i, rng.choice([op for op in _OPERATORS if op != tokens[i].text]))
    elif kind == "swapped_numbers":
        i, j = rng.sample(literals, 2)
        tokens = list(tokens)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    elif kind == "wrong_number" and literals:
        i = rng.choice(literals)
        value = parse_number(tokens[i].text) or 0
        tokens = _replace(tokens, i, format_number(value + rng.randint(1, 9)) or "1")
    elif kind == "plausible_wrong":
        values = [str(n) for n in numbers] or [t.text for t in tokens if t.kind == "num"] or ["1"]
        if len(values) == 1:
            return f"{values[0]}*2"
        a, b = rng.sample(values, 2)
        return f"{a}{rng.choice(_OPERATORS)}{b}"
    elif kind == "malformed":
        # The slips teachers make: a doubled operator or an unclosed "(" (neither parses).
        if operators and rng.random() < 0.5:
            i = rng.choice(operators)
            doubled = tokens[i].text + ("/" if tokens[i].text == "*" else "*")  # never "**" or "//"
            return _render(_replace(tokens, i, doubled))
        return "(" + _render(tokens)
    return _render(tokens)


def template_parses(text: str) -> bool:
    """Whether `text` is a template over N0..Nk ("x=(N0-N1)*2") that compiles."""
    try:
        compile_template(text)
    except TemplateError:
        return False
    return True


def repair_equation(text: str, unknown: str = "x", *, masked: bool = False) -> str | None:
    """`text` repaired into an equation "x=..." that parses (over N0..Nk when `masked`), or None: an
    unclosed "(" is closed at the end, else the first one-character deletion that parses is taken,
    tried from the end (in "x=3+*4" the slip is the second of the doubled operators).
    """

    def parses(candidate: str) -> bool:
        return template_parses(candidate) if masked else equation_parses(candidate, unknown)

    text = text.strip()[:MAX_REPAIR_CHARS]
    missing = text.count("(") - text.count(")")
    if 0 < missing <= 3 and parses(text + ")" * missing):
        return text + ")" * missing
    for i in reversed(range(len(text))):
        candidate = text[:i] + text[i + 1 :]
        if parses(candidate):
            return candidate
    return None


class SimulatedTeacher(Teacher):
    """Answers from gold equations with a seeded error profile (a simulation, named as one)."""

    def __init__(
        self,
        dataset: str,
        splits: Sequence[str] = ("train",),
        data_dir: str | Path | None = None,
        errors: Mapping[str, Mapping[str, float]] | None = None,
        repair_rate: float = 0.8,
        seed: int = 0,
        name: str = "simulated",
    ) -> None:
        if not name.startswith("simulated"):
            raise ValueError(f"teacher.name={name!r}: a simulated teacher's name must start with 'simulated'")
        if not 0 <= repair_rate <= 1:
            raise ValueError(f"teacher.repair_rate={repair_rate}: must be in [0, 1]")
        self.dataset = dataset
        self.profile = error_profile(errors)
        self.repair_rate = repair_rate
        self.seed = seed
        self.p_err = sum(self.profile["equation"].values())
        self.name = f"{name}({dataset}-gold, p_err={self.p_err:.2f})"
        self._problems: dict[str, Problem] = {}
        for split in splits:
            for problem in load_problems(dataset, split, data_dir):
                if problem.equation:
                    self._problems[problem.id] = problem
        if not self._problems:
            raise TeacherError(f"simulated teacher: {dataset} splits {list(splits)} have no gold equations")

    def covers(self, problem_id: str) -> bool:
        return problem_id in self._problems

    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        for request in requests:
            problem = self._problems.get(request.problem_id)
            if problem is None:
                raise TeacherError(f"{self.name} has no gold equation for {request.problem_id!r}")
            texts = [self.answer(request, problem, index) for index in range(params.n)]
            yield TeacherResponse(request, [Completion(text=t, finish_reason="simulated") for t in texts])

    def answer(self, request: TeacherRequest, problem: Problem, sample_index: int) -> str:
        """One completion for the request's step: deterministic in (seed, task, problem, index, prompt)."""
        # The prompt is hashed, never read: a retried correction (a new prompt) draws anew.
        rng = random.Random(stable_seed(self.seed, request.task, problem.id, sample_index, request.prompt))
        if request.task in ("format_correction", "masked_format_correction"):
            masked = request.task == "masked_format_correction"
            subject = request.subject or ""
            repaired = repair_equation(subject, masked=masked) if rng.random() < self.repair_rate else None
            return repaired if repaired is not None else subject
        gold = clean_equation(problem.equation or "").partition("=")[2]
        if request.task == "masked_equation":
            return self._masked(gold, problem, rng)
        # Refinement's teacher feedback (shown its failed attempt and the right answer) has its own rates.
        kind = _draw_error(rng, self.profile["feedback" if request.task == "feedback" else "equation"])
        if kind == "refusal":
            return REFUSALS.get(problem.language, REFUSALS["en"])
        expression = _spoil(gold, kind, rng, problem.numbers) if kind else gold
        if request.task == "solve":
            return self._solution(expression, problem)
        return f"x={expression}"

    def _masked(self, gold: str, problem: Problem, rng: random.Random) -> str:
        kind = _draw_error(rng, self.profile["masked_equation"])
        if kind == "refusal":
            return REFUSALS.get(problem.language, REFUSALS["en"])
        template = gold_template(problem)
        if template is None:
            return f"x={gold}"  # a gold equation that is no template of this problem: the check rejects it
        if kind is None:
            return f"x={template}"
        # Spoil over placeholder stand-ins (tokens must be numbers), then put the names back.
        stand_ins = {f"N{k}": str(_STAND_IN + k) for k in range(len(problem.numbers))}
        spelled = template
        for name in sorted(stand_ins, key=len, reverse=True):
            spelled = spelled.replace(name, stand_ins[name])
        try:
            spoiled = _spoil(spelled, kind, rng, list(stand_ins.values()))
        except EvaluationError:
            return f"x={template}"
        # Every stand-in-sized literal becomes a name again; a shifted one is a wrong (maybe absent) name.
        return "x=" + re.sub(r"9\d{4}", lambda m: f"N{int(m.group(0)) - _STAND_IN}", spoiled)

    def _solution(self, expression: str, problem: Problem) -> str:
        try:
            value = format_number(safe_eval(expression))
        except EvaluationError:
            value = None
        if value is None:
            return f"x={expression}"
        if problem.language == "zh":
            return f"列式计算：{expression} = {value}。答案是 {value}。"
        return f"We compute {expression} = {value}. The answer is {value}."
