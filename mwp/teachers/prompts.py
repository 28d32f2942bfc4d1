"""Teacher prompts (config group `prompt`, conf/prompt/*.yaml) turned into TeacherRequests.

Styles:
- `cot`: Fu et al.'s chain-of-thought format. With `num_exemplars > 0`, few-shot exemplars chosen
  from a training pool by reasoning complexity (complexity-based prompting: the exemplars with the
  most steps, counted as lines of a GSM8K reference solution, else operators of the reference
  equation), at random, in file order, or fixed by id (`selection: fixed`: a published prompt
  rebuilt from the dataset, e.g. `prompt=fu2023_complex`); with 0, zero-shot "Let's think step by step".
- `equation`: From-Large-to-Tiny's request for one equation "x=..." (English or Chinese).
- `equation_chain`: From-Large-to-Tiny's chain of teacher calls, one prompt per step: the equation
  (`query`, as `equation`), the same equation over the masked problem's N0..Nk (`masked_query`), the
  repair of an equation that failed to parse (`correction_query`) and of a masked equation that failed
  to parse (`masked_correction_query`). See `mwp.distill.equation_chain`. Lin et al. 2024 published no
  prompts: these texts are mwp's.

Exemplars come from a fixed set written into the prompt config (`prompt.exemplars`: the `fltt_*`
prompts, so that a weakly supervised run shows the teacher no dataset's gold equation), or are drawn
from `prompt.exemplar_dataset`. A few-shot prompt never shows the problem being asked (same id or
same question text).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from mwp.config.schema.prompt import PromptConfig, prompt_config
from mwp.data.problem import Problem
from mwp.teachers.base import TeacherRequest
from mwp.verify.numbers import format_number, parse_number

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_OPERATOR = re.compile(r"(?<=[\w.)\]])\s*[-+*/^×÷]|\*\*")
_SPACE = re.compile(r"\s+")
_TRAILING_ZERO = re.compile(r"(?<=\d)\.0+(?!\d)")

TEMPLATES: dict[tuple[str, str], dict[str, str]] = {
    ("cot", "en"): {
        "instruction": "",
        "zero_shot_instruction": (
            "Solve the following math word problem. Think step by step, then finish with "
            '"The answer is N." where N is a number.'
        ),
        "exemplar": "Question: {question}\nLet's think step by step\n{rationale}\nThe answer is {answer}.",
        "query": "Question: {question}\nLet's think step by step",
        "separator": "\n\n",
    },
    ("cot", "zh"): {
        "instruction": "",
        "zero_shot_instruction": "请解答下面的数学应用题。请一步一步地思考，最后以“答案是 N。”结尾，N 是一个数。",
        "exemplar": "问题：{question}\n让我们一步一步地思考\n{rationale}\n答案是 {answer}。",
        "query": "问题：{question}\n让我们一步一步地思考",
        "separator": "\n\n",
    },
    ("equation", "en"): {
        "instruction": (
            "Write one equation that solves the math word problem, in the form x=..., using only "
            "numbers, + - * / ^ and parentheses. Reply with the equation only."
        ),
        "zero_shot_instruction": "",
        "exemplar": "Problem: {question}\nEquation: {equation}",
        "query": "Problem: {question}\nEquation:",
        "separator": "\n\n",
    },
    ("equation", "zh"): {
        "instruction": "请为下面的数学应用题列出一个求解的方程，形式为 x=...，只使用数字、+ - * / ^ 和括号。只输出方程，不要解释。",
        "zero_shot_instruction": "",
        "exemplar": "题目：{question}\n方程：{equation}",
        "query": "题目：{question}\n方程：",
        "separator": "\n\n",
    },
    ("equation_chain", "en"): {
        "instruction": (
            "Write one equation that solves the math word problem, in the form x=..., using only "
            "numbers, + - * / ^ and parentheses. Reply with the equation only."
        ),
        "zero_shot_instruction": "",
        "exemplar": "Problem: {question}\nEquation: {equation}",
        "query": "Problem: {question}\nEquation:",
        "separator": "\n\n",
        "masked_query": (
            "In the problem below every number is replaced by a name: {mapping}. Rewrite the equation "
            "with these names instead of the numbers, in the form x=..., using only the names, "
            "+ - * / ^, parentheses and the constants {constants}. Reply with the equation only.\n\n"
            "Problem: {masked_question}\nEquation: {equation}\nEquation with names:"
        ),
        "correction_query": (
            "This equation for the math word problem below cannot be read: {error}\nCorrect it into one "
            "equation in the form x=..., using only numbers, + - * / ^ and parentheses. Reply with the "
            "corrected equation only.\n\nProblem: {question}\nEquation: {equation}\nCorrected equation:"
        ),
        "masked_correction_query": (
            "In the problem below every number is replaced by a name: {mapping}. This equation with "
            "names cannot be read: {error}\nCorrect it into one equation in the form x=..., using only "
            "the names, + - * / ^, parentheses and the constants {constants}. Reply with the corrected "
            "equation only.\n\nProblem: {masked_question}\nEquation with names: {equation}\n"
            "Corrected equation with names:"
        ),
        "retry_note": "(Correction attempt {attempt}: the previous correction still failed to parse.)",
    },
    ("equation_chain", "zh"): {
        "instruction": "请为下面的数学应用题列出一个求解的方程，形式为 x=...，只使用数字、+ - * / ^ 和括号。只输出方程，不要解释。",
        "zero_shot_instruction": "",
        "exemplar": "题目：{question}\n方程：{equation}",
        "query": "题目：{question}\n方程：",
        "separator": "\n\n",
        "masked_query": (
            "下面的题目中每个数都换成了一个名字：{mapping}。请把方程中的数换成这些名字，形式为 x=...，"
            "只使用这些名字、+ - * / ^、括号和常数 {constants}。只输出方程，不要解释。\n\n"
            "题目：{masked_question}\n方程：{equation}\n用名字写的方程："
        ),
        "correction_query": (
            "下面这道数学应用题的方程无法解析：{error}\n请把它改写成一个形式为 x=... 的方程，"
            "只使用数字、+ - * / ^ 和括号。只输出改正后的方程，不要解释。\n\n"
            "题目：{question}\n方程：{equation}\n改正后的方程："
        ),
        "masked_correction_query": (
            "下面的题目中每个数都换成了一个名字：{mapping}。这个用名字写的方程无法解析：{error}\n"
            "请把它改写成一个形式为 x=... 的方程，只使用这些名字、+ - * / ^、括号和常数 {constants}。"
            "只输出改正后的方程，不要解释。\n\n"
            "题目：{masked_question}\n用名字写的方程：{equation}\n改正后用名字写的方程："
        ),
        "retry_note": "（第 {attempt} 次改正：上一次改正后的方程仍无法解析。）",
    },
}

# A prompt as the validated config section, a plain mapping, or None (zero-shot chain of thought).
PromptSetting = PromptConfig | Mapping[str, Any] | None

# The request task of each chain step (TeacherRequest.task); "equation" is the chain's first step.
CHAIN_TASKS: tuple[str, ...] = (
    "equation",
    "masked_equation",
    "format_correction",
    "masked_format_correction",
)


def template(prompt: PromptConfig, part: str) -> str:
    """A part of the prompt: the config's own text, else the built-in template of its style and language."""
    own = getattr(prompt, part, None)
    return own if own is not None else TEMPLATES[prompt.style, prompt.language][part]


def chain_template(prompt: PromptConfig, part: str) -> str:
    """A follow-up step's template: this prompt's own, else the chain's in this language."""
    own = getattr(prompt, part, None)
    return own if own is not None else TEMPLATES["equation_chain", prompt.language][part]


# -- complexity and exemplar text ---------------------------------------------------------------------
def solution_steps(solution: str) -> list[str]:
    """Reasoning lines of a GSM8K-style solution: calculator notes and the "#### answer" line removed."""
    lines = [_CALCULATOR_NOTE.sub("", line).strip() for line in solution.splitlines()]
    return [line for line in lines if line and not line.startswith("####")]


def clean_equation(equation: str) -> str:
    """A reference equation as an exemplar shows it: "X=((32.0+42.0)-35.0)" -> "x=((32+42)-35)"."""
    text = _TRAILING_ZERO.sub("", _SPACE.sub("", equation))
    if "=" not in text:
        return f"x={text}"
    left, _, right = text.partition("=")
    return f"{left.lower()}={right}" if left.lower() == "x" else text


def complexity(problem: Problem) -> int:
    """Reasoning steps: solution lines if there is a worked solution, else operators of the equation."""
    if problem.solution:
        return len(solution_steps(problem.solution))
    if problem.equation:
        _, _, right = clean_equation(problem.equation).partition("=")
        return len(_OPERATOR.findall(right))
    return 0


def _answer_text(problem: Problem) -> str:
    if isinstance(problem.answer, Fraction):
        return format_number(problem.answer) or problem.answer_text
    return problem.answer_text


def rationale(problem: Problem, language: str = "en") -> str | None:
    """A worked rationale for a CoT exemplar (without the answer line), or None when there is none."""
    if problem.solution:
        return "\n".join(solution_steps(problem.solution))
    if problem.equation:
        expression = clean_equation(problem.equation).partition("=")[2]
        answer = _answer_text(problem)
        if language == "zh":
            return f"列式计算：{expression} = {answer}。"
        return f"We compute {expression} = {answer}."
    return None


def _usable(problem: Problem, cfg: PromptConfig) -> bool:
    if cfg.style == "cot":
        return rationale(problem, cfg.language) is not None and problem.answer is not None
    return problem.equation is not None


def rank_exemplars(pool: Sequence[Problem], cfg: PromptConfig) -> list[Problem]:
    """The pool in the order exemplars are taken: most complex first (ties by id), random, file order,
    or the fixed ids (each must be a usable problem of the pool)."""
    if cfg.selection == "fixed":
        by_id = {p.id: p for p in pool}
        ids = cfg.exemplar_ids or []
        missing = [i for i in ids if i not in by_id or not _usable(by_id[i], cfg)]
        if missing:
            raise ValueError(
                f"prompt.exemplar_ids {missing} are not usable problems of "
                f"{cfg.exemplar_dataset}/{cfg.exemplar_split} (a worked solution or equation and an answer)"
            )
        return [by_id[i] for i in ids]
    usable = [p for p in pool if _usable(p, cfg)]
    if cfg.selection == "complexity":
        return sorted(usable, key=lambda p: (-complexity(p), p.id))
    if cfg.selection == "random":
        shuffled = list(usable)
        random.Random(cfg.seed).shuffle(shuffled)
        return shuffled
    return usable


def _question_key(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def exemplars_for(problem: Problem, ranked: Sequence[Problem], k: int) -> list[Problem]:
    """The first k ranked exemplars that are not the problem itself (by id or question text)."""
    own = _question_key(problem.question)
    chosen: list[Problem] = []
    for candidate in ranked:
        if candidate.id == problem.id or _question_key(candidate.question) == own:
            continue
        chosen.append(candidate)
        if len(chosen) == k:
            break
    return chosen


def render_exemplar(problem: Problem, cfg: PromptConfig) -> str:
    fields = {
        "question": problem.question.strip(),
        "answer": _answer_text(problem),
        "rationale": rationale(problem, cfg.language) or "",
        "equation": clean_equation(problem.equation) if problem.equation else "",
    }
    return template(cfg, "exemplar").format(**fields)


def render_prompt(problem: Problem, exemplars: Sequence[Problem], cfg: PromptConfig) -> str:
    parts = []
    instruction = template(cfg, "instruction")
    if not exemplars and cfg.style == "cot":
        instruction = (
            cfg.instruction if cfg.instruction is not None else template(cfg, "zero_shot_instruction")
        )
    if instruction:
        parts.append(instruction)
    parts.extend(render_exemplar(e, cfg) for e in exemplars)
    parts.append(template(cfg, "query").format(question=problem.question.strip()))
    return template(cfg, "separator").join(parts)


# -- the entry points -----------------------------------------------------------------------------
def fixed_exemplars(prompt_cfg: PromptSetting) -> list[Problem]:
    """The prompt's own exemplar set (`prompt.exemplars`) as problems, in its order (empty without one)."""
    cfg = prompt_config(prompt_cfg)
    out = []
    for index, exemplar in enumerate(cfg.exemplars or ()):
        out.append(
            Problem(
                id=f"exemplar/{cfg.name}/{index}",
                question=exemplar.question,
                answer=parse_number(exemplar.answer),
                answer_text=exemplar.answer,
                equation=exemplar.equation,
                language=cfg.language,
                source="prompt",
            )
        )
    return out


def load_exemplar_pool(prompt_cfg: PromptSetting, data_dir: str | Path | None = None) -> list[Problem]:
    """The problems exemplars are drawn from: the prompt's fixed set, else the training problems of
    `prompt.exemplar_dataset` (empty for zero-shot prompts)."""
    cfg = prompt_config(prompt_cfg)
    if not cfg.num_exemplars:
        return []
    if cfg.exemplars is not None:
        return fixed_exemplars(cfg)
    from mwp.data.loaders import load_problems

    assert cfg.exemplar_dataset is not None
    return load_problems(cfg.exemplar_dataset, cfg.exemplar_split, data_dir, limit=cfg.exemplar_limit)


def build_requests(
    problems: Sequence[Problem],
    prompt_cfg: PromptSetting = None,
    exemplar_pool: Sequence[Problem] | None = None,
    data_dir: str | Path | None = None,
) -> list[TeacherRequest]:
    """One request per problem. `exemplar_pool=None` takes the prompt's fixed exemplar set, else loads
    `prompt.exemplar_dataset`, when exemplars are wanted."""
    cfg = prompt_config(prompt_cfg)
    ranked: list[Problem] = []
    if cfg.num_exemplars and exemplar_pool is None and cfg.exemplars is not None:
        ranked = fixed_exemplars(cfg)  # shown as written, the same for every problem
    elif cfg.num_exemplars:
        pool = exemplar_pool if exemplar_pool is not None else load_exemplar_pool(cfg, data_dir)
        ranked = rank_exemplars(pool, cfg)
        # A fixed (published) prompt stays as it is: a problem that is one of its exemplars sees the others.
        if cfg.selection != "fixed" and len(ranked) < cfg.num_exemplars + 1:
            raise ValueError(
                f"prompt.num_exemplars={cfg.num_exemplars} but the exemplar pool has only {len(ranked)} usable "
                f"problems for style {cfg.style!r}"
            )
        # Only the head of the ranking is ever used; keep a margin for skipping duplicates.
        ranked = ranked[: cfg.num_exemplars + 32]
    task = "equation" if cfg.style == "equation_chain" else "solve"
    requests = []
    for problem in problems:
        exemplars = exemplars_for(problem, ranked, cfg.num_exemplars) if cfg.num_exemplars else []
        prompt = render_prompt(problem, exemplars, cfg)
        requests.append(TeacherRequest(problem.id, prompt, cfg.system, task=task))
    return requests


def _masked_fields(problem: Problem, constants: Sequence[str]) -> dict[str, str]:
    """The masked question and the names of its numbers ("N0=2, N1=11"), as the masked prompts show them."""
    from mwp.verify.masking import mask_question

    masked = mask_question(problem.question.strip(), problem.language)
    names = problem.numbers or masked.numbers
    return {
        "mapping": ", ".join(f"N{k}={number}" for k, number in enumerate(names)) or "-",
        "constants": ", ".join(constants) or "-",
        "masked_question": masked.text,
    }


def masked_equation_request(
    problem: Problem, equation: str, prompt_cfg: PromptSetting = None, constants: Sequence[str] = ()
) -> TeacherRequest:
    """Step (b) of the chain: rewrite a verified `equation` over the masked problem's N0..Nk."""
    cfg = prompt_config(prompt_cfg)
    prompt = chain_template(cfg, "masked_query").format(
        **_masked_fields(problem, constants), equation=equation
    )
    return TeacherRequest(problem.id, prompt, cfg.system, task="masked_equation", subject=equation)


def masked_format_correction_request(
    problem: Problem,
    equation: str,
    error: str,
    prompt_cfg: PromptSetting = None,
    constants: Sequence[str] = (),
    attempt: int = 1,
) -> TeacherRequest:
    """The repair of a masked `equation` (over N0..Nk) that failed to parse with `error`; a later
    `attempt` says so at the top of the prompt, as `format_correction_request` does."""
    cfg = prompt_config(prompt_cfg)
    prompt = chain_template(cfg, "masked_correction_query").format(
        **_masked_fields(problem, constants), error=error, equation=equation
    )
    if attempt > 1:
        prompt = chain_template(cfg, "retry_note").format(attempt=attempt) + "\n" + prompt
    return TeacherRequest(problem.id, prompt, cfg.system, task="masked_format_correction", subject=equation)


def format_correction_request(
    problem: Problem, equation: str, error: str, prompt_cfg: PromptSetting = None, attempt: int = 1
) -> TeacherRequest:
    """Step (c) of the chain: repair an `equation` that failed to parse with `error`.

    A later `attempt` says so at the top of the prompt: an unchanged prompt would get the same
    (cached or greedy) answer again.
    """
    cfg = prompt_config(prompt_cfg)
    prompt = chain_template(cfg, "correction_query").format(
        error=error, question=problem.question.strip(), equation=equation
    )
    if attempt > 1:
        prompt = chain_template(cfg, "retry_note").format(attempt=attempt) + "\n" + prompt
    return TeacherRequest(problem.id, prompt, cfg.system, task="format_correction", subject=equation)


def prompt_stop(prompt_cfg: PromptSetting) -> tuple[str, ...]:
    """Stop sequences the prompt suggests (where a completion model runs on into a new exercise)."""
    return tuple(prompt_config(prompt_cfg).stop)
