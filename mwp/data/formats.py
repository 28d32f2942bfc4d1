"""The student's training formats: Fu et al. (2023)'s four, {zero-shot, in-context} x {chain-of-thought,
answer-only}, and From Large to Tiny's equation format.

Every source and target goes through `to_student_text`, and every target ends with the same
final-answer sentence, "The answer is N.", that the answer extractor reads:

- zero_shot_cot:     "Q: {question} A: Let's think step by step."  ->  "{rationale} The answer is N."
- zero_shot_answer:  "Q: {question} A:"                            ->  "The answer is N."
- in_context_cot:    k x "Q: {q} A: Let's think step by step. {rationale}", then the zero-shot CoT source
- in_context_answer: k x "Q: {q} A: The answer is {a}.", then the zero-shot answer-only source
- equation:          "equation: {question, numbers as N0..Nk}"          ->  "(N0-N1)*N2" (or prefix "* - N0 N1 N2")

The equation format's targets are templates, not answer sentences: its own task prefix tells its
sources apart from the CoT ones in a multi-task student, and scoring substitutes the problem's
numbers back (`mwp.verify.template_scoring`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from mwp.data.dedup import normalize_question
from mwp.data.problem import Problem
from mwp.data.text import ANSWER_PREFIX, answer_sentence, to_student_text
from mwp.verify.masking import mask_question
from mwp.verify.numbers import format_number
from mwp.verify.templates import TemplateError, canonical_infix, compile_template, to_prefix

Format = Literal["zero_shot_cot", "zero_shot_answer", "in_context_cot", "in_context_answer", "equation"]
FORMATS: tuple[str, ...] = get_args(Format)
ANSWER_ONLY = frozenset({"zero_shot_answer", "in_context_answer"})
EQUATION = "equation"
# Validation and test sources: no exemplars at test time.
EVAL_FORMATS: tuple[str, ...] = ("zero_shot_cot", "zero_shot_answer", EQUATION)
EquationNotation = Literal["infix", "prefix"]
EQUATION_NOTATIONS: tuple[str, ...] = get_args(EquationNotation)
# Where in-context training exemplars' rationales come from: the teacher's kept rationales, or the
# dataset's own worked solutions (Fu et al.'s choice).
ExemplarSource = Literal["rationales", "gold"]
EXEMPLAR_SOURCES: tuple[str, ...] = get_args(ExemplarSource)

COT_TRIGGER = "Let's think step by step."
EQUATION_TASK = "equation:"

# A rationale already ends with its own answer sentence when its last 100 characters hold one.
_HAS_ANSWER_SENTENCE = re.compile(re.escape(ANSWER_PREFIX) + r"\s[^\n]{0,100}$", re.IGNORECASE)
# GSM8K's calculator annotations ("<<48/2=24>>") and its final "#### 72" line.
_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")
_FINAL_LINE = re.compile(r"\n?#### .*$", re.DOTALL)


@dataclass(frozen=True)
class Example:
    """One student training pair; `exemplar_ids` are the in-context exemplars actually kept."""

    source: str
    target: str
    problem_id: str
    format: str
    exemplar_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["exemplar_ids"] = list(self.exemplar_ids)
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Example:
        row = dict(row)
        row["exemplar_ids"] = tuple(row.get("exemplar_ids") or ())
        return cls(**row)


def gold_answer_text(problem: Problem) -> str:
    """The gold answer as targets spell it: "42", "0.375", "2/3"."""
    text = format_number(problem.answer)
    if text is None:
        raise ValueError(f"{problem.id} has no numeric answer to build a target from")
    return text


def answer_target(problem: Problem) -> str:
    """ "The answer is N." for the problem's gold answer."""
    return answer_sentence(gold_answer_text(problem))


def cot_target(problem: Problem, rationale: str) -> str:
    """The rationale in student text, ending with an answer sentence (the gold one appended if it has none).

    A rationale that already states "The answer is X." keeps its own X: checking X against the gold
    answer is the filtering stage's job, not the formatter's.
    """
    text = to_student_text(rationale)
    if not text:
        raise ValueError(f"{problem.id}: empty rationale")
    if _HAS_ANSWER_SENTENCE.search(text):
        return text
    return f"{text} {answer_target(problem)}"


def gold_rationale(problem: Problem) -> str | None:
    """The dataset's own worked solution, else its equation with the result; None when it has neither.

    A GSM8K solution loses its calculator notes and its "#### N" line: `cot_target` then ends it
    with the gold answer sentence. Gold rationales keep exemplars independent of any teacher run.
    """
    if problem.solution:
        text = _FINAL_LINE.sub("", _CALCULATOR_NOTE.sub("", problem.solution)).strip()
        if text:
            return text
    answer = format_number(problem.answer)
    if problem.equation and answer is not None:
        return f"{problem.equation.strip()} = {answer}."
    return None


def gold_exemplar_pool(problems: Sequence[Problem]) -> list[tuple[Problem, str]]:
    """(problem, gold rationale) once per distinct question, in first-seen order; problems without a
    worked solution or equation, or without a numeric answer, are left out."""
    pool: list[tuple[Problem, str]] = []
    seen: set[str] = set()
    for problem in problems:
        key = normalize_question(problem.question)
        if key in seen:
            continue
        seen.add(key)
        rationale = gold_rationale(problem)
        if rationale is not None and problem.answer is not None:
            pool.append((problem, rationale))
    return pool


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Count a text's student tokens the way the model sees it (end-of-sequence token included)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    return count


def build_example(
    problem: Problem,
    rationale: str | None,
    fmt: Format,
    exemplars: Sequence[tuple[Problem, str]] = (),
    *,
    max_source_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> Example:
    """One training example in format `fmt`.

    `rationale` is required for the CoT formats (and ignored by the answer-only ones); sources
    without a target, for evaluation, come from `build_source`. With `max_source_tokens`, trailing
    exemplars are dropped until the source fits; the question itself is never truncated, so a
    zero-exemplar source may still exceed the budget.
    """
    _check_format(fmt)
    if fmt == EQUATION:
        raise ValueError(f"{problem.id}: the equation format's examples come from build_equation_example")
    if fmt.endswith("_cot"):
        if rationale is None:
            raise ValueError(
                f"{problem.id}: format {fmt} needs a rationale (build_source makes target-free sources)"
            )
        target = cot_target(problem, rationale)
    else:
        target = answer_target(problem)
    source, kept = _source(problem, fmt, exemplars, max_source_tokens, count_tokens)
    return Example(source=source, target=target, problem_id=problem.id, format=fmt, exemplar_ids=kept)


def build_source(
    problem: Problem,
    fmt: Format,
    exemplars: Sequence[tuple[Problem, str]] = (),
    *,
    max_source_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> str:
    """The source `build_example` would make, without needing a rationale or a gold answer (for evaluation)."""
    return build_source_kept(
        problem, fmt, exemplars, max_source_tokens=max_source_tokens, count_tokens=count_tokens
    )[0]


def build_source_kept(
    problem: Problem,
    fmt: Format,
    exemplars: Sequence[tuple[Problem, str]] = (),
    *,
    max_source_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """`build_source` plus the ids of the exemplars that fit: evaluation records what the model saw."""
    _check_format(fmt)
    return _source(problem, fmt, exemplars, max_source_tokens, count_tokens)


def equation_source(problem: Problem) -> str:
    """ "equation: {question with its numbers as N0..Nk}" (`mwp.verify.masking`)."""
    return to_student_text(
        f"{EQUATION_TASK} {mask_question(problem.question, problem.language).text.strip()}"
    )


def problem_numbers(problem: Problem) -> tuple[str, ...]:
    """The numbers N0..Nk stand for: the masked question's, so sources and scoring agree by construction."""
    return mask_question(problem.question, problem.language).numbers


def template_expression(template: str) -> str:
    """The expression a template computes, in one spelling: "x=((N0-N1))*N2" -> "(N0-N1)*N2".

    An equation not solved for x ("N0*x=N1") has no expression to write: TemplateError.
    """
    return canonical_infix(template)


def equation_target(template: str, notation: str = "infix") -> str:
    """The student's target for a verified template, in `notation` (infix "(N0-N1)*N2" or prefix "* - N0 N1 N2")."""
    if notation not in EQUATION_NOTATIONS:
        raise ValueError(
            f"data.equation_notation must be one of {list(EQUATION_NOTATIONS)}, got {notation!r}"
        )
    return to_prefix(template) if notation == "prefix" else canonical_infix(template)


def build_equation_example(problem: Problem, template: str, notation: str = "infix") -> Example:
    """One equation-format example: the masked question -> the template's expression.

    The template's N<k> must be numbers of the masked question (TemplateError otherwise): a
    template mapped over other numbers would teach placeholders the source does not show.
    """
    target = equation_target(template, notation)
    n_numbers = len(problem_numbers(problem))
    used = compile_template(template).max_index
    if used >= n_numbers:
        raise TemplateError(f"{problem.id}: template {template!r} uses N{used}, the question has {n_numbers}")
    return Example(source=equation_source(problem), target=target, problem_id=problem.id, format=EQUATION)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; available: {', '.join(FORMATS)}")


def _source(
    problem: Problem,
    fmt: str,
    exemplars: Sequence[tuple[Problem, str]],
    max_source_tokens: int | None,
    count_tokens: Callable[[str], int] | None,
) -> tuple[str, tuple[str, ...]]:
    if max_source_tokens is not None and count_tokens is None:
        raise ValueError("max_source_tokens needs count_tokens (see token_counter)")
    if fmt == EQUATION:
        if exemplars:
            raise ValueError(f"format {fmt} takes no exemplars, got {len(exemplars)}")
        return equation_source(problem), ()
    chain_of_thought = fmt.endswith("_cot")
    in_context = fmt.startswith("in_context")
    if in_context and not exemplars:
        raise ValueError(f"format {fmt} needs at least one exemplar")
    if not in_context and exemplars:
        raise ValueError(f"format {fmt} takes no exemplars, got {len(exemplars)}")
    key = normalize_question(problem.question)
    for exemplar, _ in exemplars:
        if exemplar.id == problem.id or normalize_question(exemplar.question) == key:
            raise ValueError(f"{problem.id}: an exemplar is the problem itself ({exemplar.id})")

    query = _query(problem.question, chain_of_thought)
    shots = [_shot(exemplar, shot_rationale, chain_of_thought) for exemplar, shot_rationale in exemplars]
    kept = len(shots)
    source = _join_source(shots, query)
    while max_source_tokens is not None and count_tokens is not None and kept > 0:
        if count_tokens(source) <= max_source_tokens:
            break
        kept -= 1
        source = _join_source(shots[:kept], query)
    return source, tuple(exemplar.id for exemplar, _ in exemplars[:kept])


def sample_exemplars(
    pool: Sequence[tuple[Problem, str]],
    k: int,
    rng: random.Random,
    exclude_id: str,
    *,
    exclude_question: str | None = None,
    require_split: str | None = "train",
) -> list[tuple[Problem, str]]:
    """Draw k (problem, rationale) pairs of k different problems from a training pool, never the excluded one.

    Problems are told apart by normalised question (`mwp.data.dedup`), not by id: datasets such as
    MultiArith repeat questions under different ids, and a pool of several samples per problem
    holds each question several times. An entry is skipped when its question matches
    `exclude_question` or an exemplar already drawn. With `require_split`, every drawn problem must
    come from that split (`meta["split"]`), so test problems never leak into prompts.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    excluded = normalize_question(exclude_question) if exclude_question is not None else None
    keys: dict[int, str] = {}

    def key_of(index: int) -> str:
        if index not in keys:
            keys[index] = normalize_question(pool[index][0].question)
        return keys[index]

    def pick(order: Sequence[int]) -> list[int]:
        chosen: list[int] = []
        taken: set[str] = set()
        for index in order:
            key = key_of(index)
            if pool[index][0].id == exclude_id or key == excluded or key in taken:
                continue
            chosen.append(index)
            taken.add(key)
            if len(chosen) == k:
                break
        return chosen

    # Rejection sampling: a uniform draw of slightly more than k, minus the excluded, is uniform over
    # the rest; only when that falls short is the whole pool shuffled and scanned.
    chosen = pick(rng.sample(range(len(pool)), min(len(pool), k + 4)))
    if len(chosen) < k:
        order = list(range(len(pool)))
        rng.shuffle(order)
        chosen = pick(order)
        if len(chosen) < k:
            raise ValueError(
                f"the exemplar pool has {len(chosen)} usable distinct problems, fewer than k={k}"
            )
    exemplars = [pool[index] for index in chosen]
    if require_split is not None:
        for problem, _ in exemplars:
            split = problem.meta.get("split")
            if split is not None and split != require_split:
                raise ValueError(
                    f"exemplar {problem.id} comes from split {split!r}; exemplars must come from {require_split!r}"
                )
    return exemplars


def _query(question: str, chain_of_thought: bool) -> str:
    return f"Q: {question.strip()}\nA: {COT_TRIGGER}" if chain_of_thought else f"Q: {question.strip()}\nA:"


def _shot(problem: Problem, rationale: str | None, chain_of_thought: bool) -> str:
    if chain_of_thought:
        if rationale is None:
            raise ValueError(f"exemplar {problem.id} needs a rationale for a chain-of-thought format")
        return f"{_query(problem.question, True)} {cot_target(problem, rationale)}"
    return f"{_query(problem.question, False)} {answer_target(problem)}"


def _join_source(shots: Sequence[str], query: str) -> str:
    return to_student_text("\n\n".join([*shots, query]))
