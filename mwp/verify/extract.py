"""The final answer of a free-text solution: "The answer is (84 / 2).", "#### 72", "\\boxed{3/8}", "答：20米".

Strict mode reads only explicit answer phrases and takes the last one; flexible mode falls back to
the last number of the text. After a phrase, the answer is the first run of arithmetic (numbers,
operators, parentheses, currency signs, unit words after numbers); a run that is an expression
("(84 / 2)") is evaluated exactly with `safe_eval`, a run with "=" ("30 - 28 = 2") gives the value
after its last "=".
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from mwp.verify.equations import solve_equation
from mwp.verify.numbers import NUMBER_PATTERN, PercentMode, parse_number
from mwp.verify.safe_eval import EvaluationError, safe_eval

__all__ = ["RUN_ON_MARKERS", "AnswerMode", "cut_run_on", "extract_answer", "extract_answer_span"]

AnswerMode = Literal["strict", "flexible"]

# Where a few-shot completion runs on into a new exercise ("...The answer is (84 / 2).\n\nQ: ...").
RUN_ON_MARKERS: tuple[str, ...] = ("Q", "Question", "问题", "题目")

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_BOXED = "\\boxed"
# Answer phrases, each anchored at a marker that `str.rfind` can locate from the end of the text.
_PHRASES_BY_MARKER: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("answer", re.compile(r"answer\s*(?:is|would\s+be|will\s+be|=|:)\s*:?", re.IGNORECASE)),
    ("####", re.compile(r"####")),
    (_BOXED, re.compile(r"\\boxed\s*\{")),
    ("答", re.compile(r"答案\s*(?:是|为|為)\s*:?|答案\s*:|答\s*:")),
)
# How far after an answer phrase the answer may be: one line, at most this many characters.
_SPAN_CHARS = 300

_RUN_TOKEN = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?P<pct>\s*%)?"
    r"|(?P<op>\*\*|//|[-+*/^×÷·⋅])"
    r"|(?P<lp>[(\[])|(?P<rp>[)\]])"
    r"|(?P<cur>[$€£¥])"
    r"|(?P<eq>=)"
    r"|(?P<word>[A-Za-z][A-Za-z'’]*(?:-[A-Za-z]+)*)"
    r"|(?P<space>[ \t]+)"
    r"|(?P<other>.)",
    re.DOTALL,
)

_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_LATEX_REPLACEMENTS = (
    (re.compile(r"\\left|\\right"), ""),
    (re.compile(r"\\cdot|\\times"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\\$"), "$"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,;!: ]"), ""),
    (re.compile(r"\^\s*\{?\\circ\}?"), ""),
    (re.compile(r"\\[A-Za-z]+"), " "),
    (re.compile(r"[{}]"), ""),
)

_RUN_ON: dict[tuple[str, ...], re.Pattern[str]] = {}


def cut_run_on(text: str, markers: tuple[str, ...] = RUN_ON_MARKERS) -> str:
    """Cut a few-shot completion where the model starts a new exercise ("\\n\\nQ: ..."), trailing space removed.

    A marker counts only at the start of a line after the first one, followed by ":" or "：".
    """
    pattern = _RUN_ON.get(markers)
    if pattern is None:
        alternatives = "|".join(re.escape(m) for m in markers)
        pattern = _RUN_ON[markers] = re.compile(rf"\n[ \t]*(?:{alternatives})[ \t]*[:：]")
    match = pattern.search(text)
    return (text[: match.start()] if match else text).rstrip()


def _clean_latex(span: str) -> str:
    if "\\" not in span and "{" not in span:
        return span
    for _ in range(5):  # nested \frac, innermost first
        span, count = _LATEX_FRAC.subn(r"(\1)/(\2)", span)
        if not count:
            break
    span = _LATEX_TEXT.sub(r" \1 ", span)
    for pattern, replacement in _LATEX_REPLACEMENTS:
        span = pattern.sub(replacement, span)
    return span


def _boxed_content(text: str, start: int) -> str:
    depth = 1
    for i in range(start, min(len(text), start + _SPAN_CHARS)):
        depth += (text[i] == "{") - (text[i] == "}")
        if depth == 0:
            return text[start:i]
    return _line_after(text, start)


def _line_after(text: str, start: int) -> str:
    rest = text[start : start + _SPAN_CHARS].lstrip()
    return rest.split("\n", 1)[0]


def _phrase_at(text: str, marker: str, pattern: re.Pattern[str], pos: int) -> re.Match[str] | None:
    before = text[pos - 1] if pos > 0 else ""
    if marker == "answer" and (before.isalnum() or before == "_"):
        return None  # "reanswer", "my_answer"
    if marker == "答" and before == "回":
        return None  # "回答：" is "reply:", not "answer:"
    return pattern.match(text, pos)


def _last_phrase(text: str) -> tuple[str, re.Match[str]] | None:
    """The answer phrase that starts last in `text` and its marker, found scanning back from the end."""
    lowered = text.translate(_ASCII_LOWER)  # str.lower() may change the length ("İ")
    best: tuple[str, re.Match[str]] | None = None
    for marker, pattern in _PHRASES_BY_MARKER:
        end = len(text)
        while True:
            pos = lowered.rfind(marker, best[1].start() if best else 0, end)
            if pos < 0:
                break
            match = _phrase_at(text, marker, pattern, pos)
            if match:
                best = marker, match
                break
            end = pos + len(marker) - 1
    return best


def _last_phrase_span(text: str) -> str | None:
    found = _last_phrase(text)
    if found is None:
        return None
    marker, phrase = found
    if marker == _BOXED:
        return _clean_latex(_boxed_content(text, phrase.end()))
    return _clean_latex(_line_after(text, phrase.end()))


@dataclass(frozen=True)
class _Run:
    raw: str  # as written, for extract_answer_span
    math: str  # unit words dropped, "x" between numbers made "*"


def _solid_index(tokens: list[tuple[str, str]], i: int, step: int) -> int | None:
    """The index of the nearest non-space token before (step -1) or after (step +1) tokens[i]."""
    j = i + step
    while 0 <= j < len(tokens):
        if tokens[j][0] != "space":
            return j
        j += step
    return None


def _first_math_run(span: str) -> _Run | None:
    """The first stretch of arithmetic in `span`, with unit words after numbers allowed inside it."""
    tokens: list[tuple[str, str]] = []
    for match in _RUN_TOKEN.finditer(span):
        kind = match.lastgroup or "other"
        if kind == "pct":  # the optional percent group of a number
            kind = "num"
        tokens.append((kind, match.group(0)))
    roles: list[str] = []  # "math", "unit", "times", "stop"
    for i, (kind, text) in enumerate(tokens):
        if kind in ("num", "op", "lp", "rp", "cur", "eq", "space"):
            roles.append("math")
            continue
        if kind == "word":
            before = _solid_index(tokens, i, -1)
            after = _solid_index(tokens, i, +1)
            after_kind = tokens[after][0] if after is not None else None
            before_kind = tokens[before][0] if before is not None else None
            if text in ("x", "X") and before_kind in ("num", "rp") and after_kind in ("num", "lp"):
                roles.append("times")
                continue
            follows_number = before is not None and (before_kind == "num" or roles[before] == "unit")
            if follows_number and after_kind not in ("num", "lp", "cur"):
                roles.append("unit")
                continue
        roles.append("stop")
    start = next(
        (
            i
            for i, (kind, _) in enumerate(tokens)
            if kind in ("num", "lp", "cur") or (kind == "op" and tokens[i][1] in "-+")
        ),
        None,
    )
    if start is None:
        return None
    end = start
    while end < len(tokens) and roles[end] != "stop":
        end += 1
    # Drop what cannot end an answer: spaces, unit words, dangling operators, "(", "$", "=".
    while end > start and (
        roles[end - 1] == "unit" or tokens[end - 1][0] in ("space", "op", "lp", "cur", "eq")
    ):
        end -= 1
    if end == start or not any(kind == "num" for kind, _ in tokens[start:end]):
        return None
    raw = "".join(text for _, text in tokens[start:end]).strip()
    math_parts = []
    for (kind, text), role in zip(tokens[start:end], roles[start:end], strict=True):
        if role == "unit":
            continue
        math_parts.append("*" if role == "times" else " " if kind == "space" else text)
    return _Run(raw, "".join(math_parts).strip())


def _strip_outer_parens(text: str) -> str:
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch in "([") - (ch in ")]")
        if depth < 0:
            return False
    return depth == 0


def _value_of(text: str, percent: PercentMode) -> Fraction | None:
    text = text.strip()
    if not text:
        return None
    value = parse_number(text, percent=percent)
    if value is not None:
        return value
    try:
        return safe_eval(text)
    except EvaluationError:
        return None


_LONE_LETTER = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")


def _run_value(run: _Run, percent: PercentMode) -> Fraction | None:
    if "=" not in run.math:
        return _value_of(run.math, percent)
    letters = set(_LONE_LETTER.findall(run.raw))
    if len(letters) == 1:  # "(5x = 30)": an equation in one unknown
        try:
            return solve_equation(_strip_outer_parens(run.raw), unknown=letters.pop())
        except EvaluationError:
            pass
    for segment in reversed(_strip_outer_parens(run.math).split("=")):
        value = _value_of(segment, percent)
        if value is not None:
            return value
    return None


def _normalized(text: str) -> str:
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-")


def _strict_run(text: str) -> _Run | None:
    span = _last_phrase_span(text)
    return _first_math_run(span) if span is not None else None


def _last_number(text: str, percent: PercentMode) -> tuple[str, Fraction] | None:
    """The last number of `text` that parses, scanning windows from the end (texts may be huge)."""
    size = 4096
    while True:
        start = max(0, len(text) - size)
        matches = list(NUMBER_PATTERN.finditer(text, start))
        if start > 0 and matches and matches[0].start() < start + 100:
            matches = matches[1:]  # it may be the tail of a number that began before the window
        for match in reversed(matches[-20:]):
            value = _value_of(match.group(0), percent)
            if value is not None:
                return match.group(0), value
        if start == 0 or len(matches) >= 20:
            return None
        size *= 8


def extract_answer_span(text: str, mode: AnswerMode = "flexible") -> str | None:
    """The answer as written: "(84 / 2)", "$1,000", "3/8"; None when there is none.

    Strict: the arithmetic right after the last answer phrase. Flexible: that, else the last number.
    """
    _check_mode(mode)
    text = _normalized(text)
    run = _strict_run(text)
    if run is not None and _run_value(run, "strip") is not None:
        return run.raw
    if mode == "strict":
        return None
    last = _last_number(text, "strip")
    return last[0] if last else None


def extract_answer(
    text: str, mode: AnswerMode = "flexible", *, percent: PercentMode = "strip"
) -> Fraction | None:
    """The final answer of a solution as an exact number, or None.

    Strict mode reads only explicit answer phrases ("The answer is ...", "the final answer is",
    "Answer: ...", "#### ...", "\\boxed{...}", "答案是...", "答：...") and takes the last one; flexible
    mode falls back to the last number of the text when strict finds nothing. `percent="strip"`
    reads a final "50%" as 50, `percent="fraction"` as 1/2. Few-shot completions should go through
    `cut_run_on` first: the exercise a model runs on into has answer phrases of its own.
    """
    _check_mode(mode)
    text = _normalized(text)
    run = _strict_run(text)
    if run is not None:
        value = _run_value(run, percent)
        if value is not None:
            return value
    if mode == "strict":
        return None
    last = _last_number(text, percent)
    return last[1] if last else None


def _check_mode(mode: str) -> None:
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
