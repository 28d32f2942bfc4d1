"""The final answer of a free-text solution: "The answer is (84 / 2).", "#### 72", "\\boxed{3/8}", "答：20米".

The rules, in order (`mwp-judge --help` prints the same list):

1. Run-on: a few-shot completion is cut where the model starts a new exercise (a line starting
   "Q:", "Question:", "问题：", "题目：" after the first line, see `cut_run_on`); nothing after the
   cut is read, so "The answer is 188.\\n\\nQ: The first book is 31 mm..." gives 188.
2. Answer phrases (strict mode reads only these; the last one in the text wins):
   "answer is / would be / will be / = / :" (so "The answer is", "the final answer is",
   "Answer:", "Final answer:"), with an optional parenthetical before the verb (zero-shot CoT's
   "the answer (arabic numerals) is"); a line that starts with "A:" and goes straight on to a
   number ("A: 26", not "A: Let's think step by step."); GSM8K's "####"; "\\boxed{...}";
   "答案是 / 答案为 / 答案：" and "答：" (not "回答：").
3. Negation: "the answer is not 5", "the answer isn't 5" give no answer.
4. The value: the first stretch of arithmetic on the phrase's line (numbers, operators,
   parentheses, currency signs, unit words after numbers: "$1,375", "4 hours"). An expression
   ("(84 / 2)") is evaluated exactly with `safe_eval`, never with `eval`; a calculation with "="
   ("30 - 28 = 2") gives the value after its last "=" (or the solution of a one-unknown equation,
   "(5x = 30)" -> 6).
5. Integers in words: when the answer sentence has no digit at all, number words are read
   ("two hundred and eighty" -> 280, "fifty-six dollars" -> 56). Only integers; no ordinals.
6. Hedges and double answers: "3 or 5", "either 3 or 4", "between 3 and 5", "7 hours, or maybe
   8" and two values joined by "and" ("(53 + 17) and (14 - 10)", PaLM's answer to "how many
   push-ups and crunches") give no answer when the values differ: the text does not say which
   one answers the question. A restatement of the same value ("0.5 or 1/2", "3/8 or .375",
   "3 apples and 3 pears") is that value. Prose after "and" ("12, and she has 3 left") is not a
   second answer: the second value must follow "and" at once.
7. Percent: a "50%" answer reads as 50 with `percent="strip"` (the default, the figure a question
   asking for a percentage wants) and as 1/2 with `percent="fraction"`; inside an expression "%"
   is always /100 ("100*(1+20%)" -> 120). `gold_matches` accepts either reading of a "%" gold.
8. Flexible mode: the same, except that when the text has no answer phrase at all it takes the
   last number of the text. A phrase that is found but refused (negated, hedged, no readable
   value after it) gives no answer in both modes: the model did not commit to a number.

Sizes are bounded: numbers longer than `MAX_NUMBER_CHARS` are not read, an answer span is one
line of at most 300 characters, the phrase search looks past at most 1000 non-phrase occurrences
of each marker (from the end), and the last number is looked for in the last 256 KiB only.
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
    (
        "answer",
        re.compile(
            r"answer\s*(?:\([^()\n]{0,40}\)\s*)?"  # zero-shot CoT: "the answer (arabic numerals) is"
            r"(?:is(?P<neg1>n['’]t)?(?![A-Za-z])|would\s+be|will\s+be|should\s+be|=|:)"
            r"(?P<neg2>\s+not(?![A-Za-z]))?\s*:?",
            re.IGNORECASE,
        ),
    ),
    ("a:", re.compile(r"[Aa]\s*:")),
    ("####", re.compile(r"####")),
    (_BOXED, re.compile(r"\\boxed\s*\{")),
    ("答", re.compile(r"答案\s*(?:是|为|為)\s*:?|答案\s*:|答\s*:")),
)
# Flexible mode's last number must lie in the text's last 256 KiB (4096 * 8**3 characters).
_LAST_NUMBER_CHARS = 4096 * 8**3
# How many occurrences of one marker that are not a phrase ("data:", "answers") are looked past.
_MAX_MARKER_TRIES = 1000
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

_NUMBER_WORDS: dict[str, int] = {
    word: value
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
} | {
    word: 10 * (i + 2)
    for i, word in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])
}
_SCALE_WORDS = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORD = "|".join(sorted([*_NUMBER_WORDS, *_SCALE_WORDS], key=len, reverse=True))
# "two hundred and eighty", "fifty-six", "a hundred": joined by spaces, hyphens and "and".
_NUMBER_WORDS_RUN = re.compile(
    rf"(?<![A-Za-z])(?:a[ \t]+(?=hundred|thousand|million))?(?:{_NUMBER_WORD})"
    rf"(?:(?:[ \t]+and[ \t]+|[ \t]*-[ \t]*|[ \t]+)(?:{_NUMBER_WORD}))*(?![A-Za-z])",
    re.IGNORECASE,
)
# What may follow "A:" at the start of a line for it to be an answer: a number, sign, "(", "$".
_A_LINE_ANSWER = re.compile(
    rf"[ \t]*(?:[-+−(\[$€£¥]|\d|\.\d|\\boxed|(?:{_NUMBER_WORD})(?![A-Za-z]))", re.IGNORECASE
)
_NEGATION_AFTER = re.compile(r"\s*not(?![A-Za-z])", re.IGNORECASE)
_HEDGE_BEFORE = re.compile(r"(?<![A-Za-z])(?:either|between)(?![A-Za-z])", re.IGNORECASE)
_HEDGE_AFTER = re.compile(r"[ \t]*,?[ \t]*(?:or|and/or|and)(?![A-Za-z])", re.IGNORECASE)
# "3 or 5", "7 hours, or maybe 8": up to two unit words may sit between a value and its "or".
_OR_AFTER = re.compile(
    r"(?:[ \t]+[A-Za-z][A-Za-z'’-]*){0,2}[ \t]*,?[ \t]*(?:or|and/or|或者?)(?![A-Za-z])", re.IGNORECASE
)
# "(53 + 17) and (14 - 10)": a second value straight after "and" makes two answers, not one.
_AND_AFTER = re.compile(
    r"(?:[ \t]+[A-Za-z][A-Za-z'’-]*){0,2}[ \t]*,?[ \t]*(?:and|和)[ \t]*(?=[-+(\[$€£¥\d.])", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[;。！？；]")


def _words_to_number(words: str) -> int | None:
    """The integer that a run of number words names ("two hundred and eighty" -> 280), or None."""
    total = current = 0
    seen = False
    for word in re.split(r"[\s-]+", words.lower()):
        if word in ("and", ""):
            continue
        if word == "a":
            current = max(current, 1)
            continue
        if word in _NUMBER_WORDS:
            current += _NUMBER_WORDS[word]
            seen = True
        elif word == "hundred":
            current = max(current, 1) * 100
            seen = True
        elif word in _SCALE_WORDS:
            total += max(current, 1) * _SCALE_WORDS[word]
            current = 0
            seen = True
        else:
            return None
    return total + current if seen else None


def _digits_for_words(span: str) -> str:
    """`span` with number words written as digits, when it has no digit of its own (rule 5)."""
    if any(ch.isdigit() for ch in span):
        return span

    def replace(match: re.Match[str]) -> str:
        value = _words_to_number(match.group(0))
        return match.group(0) if value is None else str(value)

    return _NUMBER_WORDS_RUN.sub(replace, span)


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
    if marker == "a:":
        i = pos - 1
        while i >= 0 and text[i] in " \t":
            i -= 1
        if i >= 0 and text[i] != "\n":
            return None  # "A:" counts only at the start of a line
    match = pattern.match(text, pos)
    if match and marker == "a:" and not _A_LINE_ANSWER.match(text, match.end()):
        return None  # "A: Let's think step by step." opens a solution, it is not an answer
    return match


def _last_phrase(text: str) -> tuple[str, re.Match[str]] | None:
    """The answer phrase that starts last in `text` and its marker, found scanning back from the end."""
    lowered = text.translate(_ASCII_LOWER)  # str.lower() may change the length ("İ")
    best: tuple[str, re.Match[str]] | None = None
    for marker, pattern in _PHRASES_BY_MARKER:
        end = len(text)
        for _ in range(_MAX_MARKER_TRIES):  # untrusted text: "a:a:a:..." must not take seconds
            pos = lowered.rfind(marker, best[1].start() if best else 0, end)
            if pos < 0:
                break
            match = _phrase_at(text, marker, pattern, pos)
            if match:
                best = marker, match
                break
            end = pos + len(marker) - 1
    return best


@dataclass(frozen=True)
class _Run:
    raw: str  # as written, for extract_answer_span
    math: str  # unit words dropped, "x" between numbers made "*"
    start: int = 0  # where the run starts and ends in the span it was read from
    end: int = 0


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
    offsets: list[int] = []
    for match in _RUN_TOKEN.finditer(span):
        offsets.append(match.start())
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
    end_offset = offsets[end - 1] + len(tokens[end - 1][1])
    return _Run(raw, "".join(math_parts).strip(), offsets[start], end_offset)


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


@dataclass(frozen=True)
class _Reading:
    """What the last answer phrase says: `run` and `value` are None when it commits to no number."""

    run: _Run | None = None
    value: Fraction | None = None


def _phrase_reading(text: str, percent: PercentMode) -> _Reading | None:
    """Rules 2-6 of the module doc on `text`; None when the text has no answer phrase at all."""
    found = _last_phrase(text)
    if found is None:
        return None
    marker, phrase = found
    if marker == "answer" and (phrase.group("neg1") or phrase.group("neg2")):
        return _Reading()  # "the answer is not 5", "the answer isn't 5"
    if marker == _BOXED:
        span = _clean_latex(_boxed_content(text, phrase.end()))
    else:
        span = _clean_latex(_line_after(text, phrase.end()))
    if _NEGATION_AFTER.match(span):
        return _Reading()  # "Answer: not 5"
    span = _digits_for_words(span)
    run = _first_math_run(span)
    if run is None:
        return _Reading()
    value = _run_value(run, percent)
    if value is None:
        return _Reading()
    end = _SENTENCE_END.search(span, run.end)
    suffix = span[run.end : end.start() if end else len(span)]
    joined = _OR_AFTER.match(suffix) or _AND_AFTER.match(suffix)
    if joined is None and _HEDGE_BEFORE.search(span, 0, run.start):
        joined = _HEDGE_AFTER.match(suffix)  # "between 3 and 5", "either 3 or 4"
    if joined is not None:
        other = _first_math_run(suffix[joined.end() :])
        other_value = _run_value(other, percent) if other is not None else None
        if other_value is not None and other_value != value:
            return _Reading()  # a hedge between two different values
    return _Reading(run, value)


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
        if start == 0 or len(matches) >= 20 or size >= _LAST_NUMBER_CHARS:
            return None
        size *= 8


def extract_answer_span(text: str, mode: AnswerMode = "flexible", *, cut: bool = True) -> str | None:
    """The answer as written: "(84 / 2)", "$1,000", "3/8"; None when there is none.

    Strict: the arithmetic right after the last answer phrase. Flexible: that, else (no phrase at
    all) the last number. Number words are returned as the digits they were read as.
    """
    _check_mode(mode)
    text = cut_run_on(_normalized(text)) if cut else _normalized(text)
    reading = _phrase_reading(text, "strip")
    if reading is not None:
        return reading.run.raw if reading.run is not None else None
    if mode == "strict":
        return None
    last = _last_number(text, "strip")
    return last[0] if last else None


def extract_answer(
    text: str, mode: AnswerMode = "flexible", *, percent: PercentMode = "strip", cut: bool = True
) -> Fraction | None:
    """The final answer of a solution as an exact number, or None (the rules are in the module doc).

    Strict mode reads only explicit answer phrases and takes the last one; flexible mode falls back
    to the last number of the text only when the text has no answer phrase at all, since a refused
    phrase ("the answer is 3 or 5") means the model gave no single answer. `percent="strip"` reads a
    final "50%" as 50, `percent="fraction"` as 1/2. A few-shot run-on (a line "Q: ...") is cut first
    unless `cut=False` (for texts whose later "Q:" lines belong to the solution).
    """
    _check_mode(mode)
    text = cut_run_on(_normalized(text)) if cut else _normalized(text)
    reading = _phrase_reading(text, percent)
    if reading is not None:
        return reading.value
    if mode == "strict":
        return None
    last = _last_number(text, percent)
    return last[1] if last else None


def _check_mode(mode: str) -> None:
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
