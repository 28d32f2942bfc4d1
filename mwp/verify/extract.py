"""The final answer of a free-text solution: "The answer is (84 / 2).", "#### 72", "\\boxed{3/8}", "答：20米".

The rules, in order (`mwp-judge --help` prints the same list):

1. Run-on: a few-shot completion is cut where the model starts a new exercise (a line starting
   "Q:", "Question:", "问题：", "题目：" after the first line, see `cut_run_on`); nothing after the
   cut is read, so "The answer is 188.\\n\\nQ: The first book is 31 mm..." gives 188.
2. Answer phrases (strict mode reads only these):
   "answer is / would be / will be / = / :" (so "The answer is", "the final answer is",
   "Answer:", "Final answer:"), with an optional parenthetical before the verb (zero-shot CoT's
   "the answer (arabic numerals) is"); a line that starts with "A:" and goes straight on to a
   number ("A: 26", not "A: Let's think step by step."); GSM8K's "####"; "\\boxed{...}";
   "答案是 / 答案为 / 答案：" and "答：" (not "回答：").
3. The last readable phrase wins. Phrases are read from the last one back: a phrase with no
   readable value after it ("The answer (roman numerals) is CDXLVI.", "is _____.") leaves an
   earlier one standing, and a restatement in a weaker form ("the answer in words is", "the
   answer (in words) is", "as a fraction") gives way to an earlier phrase with a value: "is 12.5.
   The answer in words is twelve point five" -> 12.5. A text that stops inside the statement
   after its last phrase ("... So the answer is") was cut off before its answer: no answer. At
   most 16 phrases.
4. Negation: "the answer is not 5", "the answer isn't 5" give no answer (and end the search).
5. The value: the first stretch of arithmetic with a number in it in the sentence the phrase
   opens, on its line (numbers, operators, parentheses, currency signs, unit words after numbers:
   "$1,375", "4 hours"; "the answer is correct. We have 20 left" has none). An
   expression ("(84 / 2)") is evaluated exactly with `safe_eval`, never with `eval`; a calculation
   with "=" ("30 - 28 = 2") gives the value after its last "=" (or the solution of a one-unknown
   equation, "(5x = 30)" -> 6). An expression over unknowns ("180 - 20x", "$50 * Number of
   Chickens", "x = y + 30") or cut off after an operator has no value, and a time of day ("3:45")
   is not a number. A side calculation in brackets after a unit word ("9 towels (35 - 26 = 9)")
   is not part of the value. After a verbless phrase ("Answer:", "A:", "答：") the value is the one
   the sentence's verb states, not a number in its subject or opening phrase: "Answer: Allen's
   age 10 years from now is 242." -> 242, "Answer: After 60 days, she will spend $16." -> 16.
6. The final statement after a calculation: when the phrase ends its line ("The answer is:" and
   the working below it, "Answer:" and a paragraph; punctuation alone does not count as a
   statement) or its statement goes on past the line
   ("$7500 + $1500 + $1800 =" and "$11,000" on the next line; "+ 28" and "= 252"), the value is
   that of the last statement with a value in the block below (list labels such as "Step 2:" or
   "2." skipped): "The answer is:\\n\\nx + y = 38\\ny = 9\\n\\nThere were 9 bad carrots." -> 9.
   The block ends at the next answer phrase, after 24 lines or after 1500 characters.
7. Numbers in words: when the answer sentence has no digit at all, number words are read
   ("two hundred and eighty" -> 280, "fifty-six dollars" -> 56), decimals too ("twelve point
   five" -> 12.5, "three hundred forty point twenty-five" -> 340.25, "point two five" -> 0.25).
   No ordinals.
8. Hedges and double answers: "3 or 5", "either 3 or 4", "between 3 and 5", "7 hours, or maybe
   8", a bare list ("15, 9, 8") and two values joined by "and" ("(53 + 17) and (14 - 10)", PaLM's
   answer to "how many push-ups and crunches") give no answer when the values differ: the text
   does not say which one answers the question. A restatement of the same value ("0.5 or 1/2",
   "3 apples and 3 pears"), also one that agrees to the places it prints ("1/3, or
   0.333333333333333", ".67 or .6666666666666666"), is that value, read from the more precise
   of the two. Prose after "and" ("12, and she has 3 left") is not a second answer: the second
   value must follow "and" at once.
9. Percent: a "50%" answer reads as 50 with `percent="strip"` (the default, the figure a question
   asking for a percentage wants) and as 1/2 with `percent="fraction"`; inside an expression "%"
   is always /100 ("100*(1+20%)" -> 120). `gold_matches` accepts either reading of a "%" gold.
10. Flexible mode: the same, except that when the text has no answer phrase at all it takes the
   last number of the text. A phrase that is found but refused (negated, hedged) or that no
   phrase with a value backs up gives no answer in both modes: the model did not commit to a
   number.

Sizes are bounded: numbers longer than `MAX_NUMBER_CHARS` are not read, an answer statement is one
line of at most 300 characters (a block at most 24 lines and 1500 characters), the phrase search
looks past at most 1000 non-phrase occurrences of each marker (from the end) for each of at most
16 phrases, and the last number is looked for in the last 256 KiB only.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from mwp.verify.compare import decimal_places
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
            # zero-shot CoT: "the answer (arabic numerals) is"; restatements: "the answer in words is"
            r"answer\s*(?:\((?P<paren>[^()\n]{0,40})\)\s*|\s(?P<form>in\s+words?|in\s+roman\s+numerals"
            r"|as\s+an?\s+(?:fraction|decimal|percent(?:age)?|mixed\s+number))\s*)?"
            r"(?:is(?P<neg1>n['’]t)?(?![A-Za-z])|would\s+be|will\s+be|should\s+be|=|(?P<colon>:))"
            r"(?P<neg2>\s+not(?![A-Za-z]))?[ \t]*:?",
            re.IGNORECASE,
        ),
    ),
    ("a:", re.compile(r"[Aa]\s*:")),
    ("####", re.compile(r"####")),
    (_BOXED, re.compile(r"\\boxed\s*\{")),
    ("答", re.compile(r"答案[ \t]*(?:是|为|為)[ \t]*:?|答案[ \t]*:|答[ \t]*:")),
)
# Flexible mode's last number must lie in the text's last 256 KiB (4096 * 8**3 characters).
_LAST_NUMBER_CHARS = 4096 * 8**3
# How many occurrences of one marker that are not a phrase ("data:", "answers") are looked past.
_MAX_MARKER_TRIES = 1000
# How far after an answer phrase the answer may be: one line, at most this many characters.
_SPAN_CHARS = 300
# An answer phrase that ends its line opens a block: at most this many characters and lines.
_BLOCK_CHARS = 1500
_BLOCK_LINES = 24
# How many answer phrases are read, from the last one back, looking for one with a value.
_MAX_PHRASES = 16
# Words that join statements: never unit words inside a run ("7 peaches and Jill has -65").
_CONJUNCTIONS = frozenset({"and", "or", "but", "while", "whereas", "so", "then"})

_RUN_TOKEN = re.compile(
    r"(?P<time>\d{1,2}:\d{2}(?!\d))"  # "3:45", "5:00 PM": a time of day, not a number
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+|\.(?=[ \t]*[-+*/×÷=]))?|\.\d+)(?P<pct>\s*%)?"
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
_WORD_SEPARATOR = r"(?:[ \t]+and[ \t]+|[ \t]*-[ \t]*|[ \t]+)"
# "two hundred and eighty", "fifty-six", "a hundred", "twelve point five", "point two five": joined
# by spaces, hyphens and "and", with at most one decimal "point".
_NUMBER_WORDS_RUN = re.compile(
    rf"(?<![A-Za-z])(?:(?:a[ \t]+(?=hundred|thousand|million))?(?:{_NUMBER_WORD})"
    rf"(?:{_WORD_SEPARATOR}(?:{_NUMBER_WORD}))*(?:[ \t]+point[ \t]+(?:{_NUMBER_WORD}|oh)"
    rf"(?:{_WORD_SEPARATOR}(?:{_NUMBER_WORD}|oh))*)?"
    rf"|point[ \t]+(?:{_NUMBER_WORD}|oh)(?:{_WORD_SEPARATOR}(?:{_NUMBER_WORD}|oh))*)(?![A-Za-z])",
    re.IGNORECASE,
)
# What may follow "A:" at the start of a line for it to be an answer: a number, sign, "(", "$".
_A_LINE_ANSWER = re.compile(
    rf"[ \t]*(?:[-+−(\[$€£¥]|\d|\.\d|\\boxed|(?:{_NUMBER_WORD})(?![A-Za-z]))", re.IGNORECASE
)
_NEGATION_AFTER = re.compile(r"\s*not(?![A-Za-z])", re.IGNORECASE)
_HEDGE_BEFORE = re.compile(r"(?<![A-Za-z])(?:either|between)(?![A-Za-z])", re.IGNORECASE)
_HEDGE_AFTER = re.compile(r"[ \t]*,?[ \t]*(?<![A-Za-z])(?:or|and/or|and)(?![A-Za-z])", re.IGNORECASE)
# "3 or 5", "7 hours, or maybe 8": up to two unit words may sit between a value and its "or".
_OR_AFTER = re.compile(
    r"(?:[ \t]+[A-Za-z][A-Za-z'’-]*){0,2}[ \t]*,?[ \t]*(?<![A-Za-z])(?:or|and/or|或者?)(?![A-Za-z])",
    re.IGNORECASE,
)
# "(53 + 17) and (14 - 10)": a second value straight after "and" makes two answers, not one.
_AND_AFTER = re.compile(
    r"(?:[ \t]+[A-Za-z][A-Za-z'’-]*){0,2}[ \t]*,?[ \t]*(?<![A-Za-z])(?:and|和)[ \t]*(?=[-+(\[$€£¥\d.])",
    re.IGNORECASE,
)
# "15, 9, 8": a bare list of values (the second one followed by a comma, "and" or the sentence end).
_LIST_AFTER = re.compile(
    r"[ \t]*,[ \t]*(?=[-+$€£¥]?(?:\d|\.\d)[\d,.]*%?[ \t]*(?:[,;]|and(?![A-Za-z])|[.!?]?[ \t]*$))",
    re.IGNORECASE,
)
_TO_COMMA = re.compile(r"[^,;:.\d]*,[ \t]*")
_POINT = re.compile(r"(?<![A-Za-z])point(?![A-Za-z])", re.IGNORECASE)
# A sentence ends at ".", "!" or "?" before a space, but "2. = 5" is a number in a calculation.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)(?![ \t]*[=+*/×÷])|[;。！？；]")
# A verbless answer sentence ("Answer: Allen's age 10 years from now is 242."): its value is the
# number its verb states, not a number inside its subject or an opening phrase ("After 60 days,").
_COPULA_THEN_VALUE = re.compile(
    r"[^,;:]*?(?<![A-Za-z])(?:is|are|was|were|will[ \t]+be|would[ \t]+be|equals?)[ \t]+"
    r"(?=[-+(\[$€£¥]?(?:\d|\.\d))",
    re.IGNORECASE,
)
_COPULA = re.compile(r"(?<![A-Za-z])(?:is|are|was|were|be|equals?)(?![A-Za-z])|=", re.IGNORECASE)
_OPENING_PHRASE = re.compile(
    r"[ \t]*(?:after|in|for|over|within|during|by|at|with)(?![A-Za-z])[^,;:.]*$", re.IGNORECASE
)
# A list label at the start of a line of an answer block: "Step 2:", "2.", "(2)", "2)".
_LIST_LABEL = re.compile(
    r"[ \t]*(?:(?:step|part)[ \t]*\d{1,3}[ \t]*[:.)]|\(?\d{1,3}[.)])[ \t]+(?=[A-Za-z])", re.IGNORECASE
)
# Restating phrases ("the answer in words is", "the answer (roman numerals) is") repeat a value
# stated before them in another, weaker form.
_RESTATED_FORM = re.compile(r"word|roman|fraction|decimal|percent|spell|written|letter", re.IGNORECASE)
# Letters that stand for an unknown when glued to a number ("20x", "3y"), not for a unit.
_UNKNOWNS = frozenset("xyzn")


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


def _decimal_words(words: str) -> str | None:
    """The digits after a spoken decimal point: "two five" -> "25", "twenty-five" -> "25", else None."""
    parts = [w for w in re.split(r"[\s-]+", words.lower()) if w and w != "and"]
    if parts and all(w == "oh" or _NUMBER_WORDS.get(w, 10) < 10 for w in parts):
        return "".join("0" if w == "oh" else str(_NUMBER_WORDS[w]) for w in parts)
    value = _words_to_number(words)
    return str(value) if value is not None and value < 100 else None


def _spoken_number(words: str) -> str | None:
    """Digits for a run of number words: "twelve point five" -> "12.5", "point five" -> "0.5"."""
    point = _POINT.search(words)
    if point is None:
        value = _words_to_number(words)
        return None if value is None else str(value)
    whole = words[: point.start()]
    integer = _words_to_number(whole) if whole.strip() else 0
    digits = _decimal_words(words[point.end() :])
    return None if integer is None or digits is None else f"{integer}.{digits}"


def _digits_for_words(span: str) -> str:
    """`span` with number words written as digits, when it has no digit of its own (rule 7)."""
    if any(ch.isdigit() for ch in span):
        return span

    def replace(match: re.Match[str]) -> str:
        digits = _spoken_number(match.group(0))
        return match.group(0) if digits is None else digits

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
    return text[start : start + _SPAN_CHARS].lstrip().split("\n", 1)[0]


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


def _last_phrase(text: str, lowered: str, end: int) -> tuple[str, re.Match[str]] | None:
    """The answer phrase that starts last before `end` and its marker, found scanning back."""
    best: tuple[str, re.Match[str]] | None = None
    for marker, pattern in _PHRASES_BY_MARKER:
        stop = end
        for _ in range(_MAX_MARKER_TRIES):  # untrusted text: "a:a:a:..." must not take seconds
            pos = lowered.rfind(marker, best[1].start() if best else 0, stop)
            if pos < 0:
                break
            match = _phrase_at(text, marker, pattern, pos)
            if match:
                best = marker, match
                break
            stop = pos + len(marker) - 1
    return best


@dataclass(frozen=True)
class _Run:
    raw: str  # as written, for extract_answer_span
    math: str  # unit words dropped, "x" between numbers made "*"
    start: int = 0  # where the run starts and ends in the span it was read from
    end: int = 0
    unknown: bool = False  # a letter glued to a number stands for an unknown ("20x")


def _solid_index(tokens: list[tuple[str, str]], i: int, step: int) -> int | None:
    """The index of the nearest non-space token before (step -1) or after (step +1) tokens[i]."""
    j = i + step
    while 0 <= j < len(tokens):
        if tokens[j][0] != "space":
            return j
        j += step
    return None


def _first_math_run(span: str) -> _Run | None:
    """The first stretch of arithmetic in `span` that holds a number, unit words after numbers allowed.

    None when there is none, or when the first one leans on a word ("$50 * Number of Chickens",
    "x = y + 30"): an expression over unknowns has no value.
    """
    tokens: list[tuple[str, str]] = []
    offsets: list[int] = []
    for match in _RUN_TOKEN.finditer(span):
        offsets.append(match.start())
        kind = match.lastgroup or "other"
        if kind == "pct":  # the optional percent group of a number
            kind = "num"
        tokens.append((kind, match.group(0)))
    roles: list[str] = []  # "math", "unit", "times", "unknown", "stop"
    for i, (kind, text) in enumerate(tokens):
        if kind == "lp" and (before := _solid_index(tokens, i, -1)) is not None and roles[before] == "unit":
            roles.append("stop")  # "9 towels (35 - 26 = 9)": a side calculation, not a factor
            continue
        if kind in ("num", "op", "lp", "rp", "cur", "eq", "space"):
            roles.append("math")
            continue
        if kind == "word" and text.lower() not in _CONJUNCTIONS:
            before = _solid_index(tokens, i, -1)
            after = _solid_index(tokens, i, +1)
            after_kind = tokens[after][0] if after is not None else None
            before_kind = tokens[before][0] if before is not None else None
            if text in ("x", "X") and before_kind in ("num", "rp") and after_kind in ("num", "lp"):
                roles.append("times")
                continue
            if text in _UNKNOWNS and before == i - 1 and before_kind in ("num", "lp"):
                roles.append("unknown")  # "20x", "10(x)": glued to its number or bracket
                continue
            follows_number = before is not None and (before_kind == "num" or roles[before] == "unit")
            if follows_number and after_kind not in ("num", "lp", "cur"):
                roles.append("unit")
                continue
        roles.append("stop")
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if not (kind in ("num", "lp", "cur") or (kind == "op" and text in "-+")):
            i += 1
            continue
        start = end = i
        while end < len(tokens) and roles[end] != "stop":
            end += 1
        stop = end
        # An operator before the next word ("$50 * Number") or after a word ("y + 30"): unknowns.
        last = end - 1
        while last >= start and tokens[last][0] == "space":
            last -= 1
        if last >= start and (
            (
                tokens[last][0] == "op"
                and tokens[last][1] != "-"
                and end < len(tokens)
                and tokens[end][0] == "word"
            )
            or (tokens[last][0] == "op" and end == len(tokens))
        ):
            return None  # "$50 * Number of Chickens", a line cut off after "*"
        previous = _solid_index(tokens, start, -1)
        spaced = start + 1 < len(tokens) and tokens[start + 1][0] == "space"
        if (
            kind == "op"
            and previous is not None
            and tokens[previous][0] == "word"
            and (spaced or previous == i - 1)
        ):
            return None  # "y + 30" (but "dropped to -5" is a sign)
        # Drop what cannot end an answer: spaces, unit words, dangling operators, "(", "$", "=".
        while end > start and (
            roles[end - 1] == "unit" or tokens[end - 1][0] in ("space", "op", "lp", "cur", "eq")
        ):
            end -= 1
        depth = sum((kind == "lp") - (kind == "rp") for kind, _ in tokens[start:end])
        while depth < 0 and end > start and tokens[end - 1][0] in ("rp", "space"):
            depth += tokens[end - 1][0] == "rp"  # "(assuming the answer is 0.6)": not the run's ")"
            end -= 1
        if end == start or not any(kind == "num" for kind, _ in tokens[start:end]):
            i = max(stop, i + 1)  # "$$x=36$$": a stretch without a number is not the answer
            continue
        raw = "".join(text for _, text in tokens[start:end]).strip()
        math_parts = []
        for (kind, text), role in zip(tokens[start:end], roles[start:end], strict=True):
            if role == "unit":
                continue
            math_parts.append("*" if role == "times" else " " if kind == "space" else text)
        end_offset = offsets[end - 1] + len(tokens[end - 1][1])
        unknown = "unknown" in roles[start:end]
        return _Run(raw, "".join(math_parts).strip(), offsets[start], end_offset, unknown)
    return None


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
        return None if run.unknown else _value_of(run.math, percent)
    letters = set(_LONE_LETTER.findall(run.raw))
    if len(letters) == 1:  # "(5x = 30)": an equation in one unknown
        try:
            return solve_equation(_strip_outer_parens(run.raw), unknown=letters.pop())
        except EvaluationError:
            pass
    if run.unknown:
        return None
    for segment in reversed(_strip_outer_parens(run.math).split("=")):
        value = _value_of(segment, percent)
        if value is not None:
            return value
    return None


def _normalized(text: str) -> str:
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-")


@dataclass(frozen=True)
class _Reading:
    """What an answer statement says: `run` and `value` are None when it gives no number.

    `refused` marks a statement that commits to no single number (a negation or a hedge), as
    opposed to one with nothing readable in it.
    """

    run: _Run | None = None
    value: Fraction | None = None
    refused: bool = False
    goes_on: bool = False  # the statement ends in "=" ("$7500 + $1800 ="): its result is below it


_REFUSED = _Reading(refused=True)


def _agrees_to_its_places(decimal: Fraction, other: Fraction) -> bool:
    """Is `decimal` `other` rounded to the places it prints (0.333333333333333 and 1/3; .67 and 2/3)?"""
    places = decimal_places(decimal)
    return places is not None and places > 0 and abs(decimal - other) <= Fraction(1, 2 * 10**places)


def _precision(value: Fraction) -> int:
    places = decimal_places(value)
    return 10**6 if places is None else places  # an exact 1/3 beats any decimal


def _same_answer(value: Fraction, other: Fraction) -> bool:
    return value == other or _agrees_to_its_places(value, other) or _agrees_to_its_places(other, value)


def _main_clause(span: str, run: _Run, percent: PercentMode) -> _Run:
    """In a verbless answer sentence, the run its verb states (module doc, rule 5)."""
    sentence_end = _SENTENCE_END.search(span, run.end)
    rest_end = sentence_end.start() if sentence_end else len(span)
    before = span[: run.start]
    if _COPULA.search(before) is None:
        verb = _COPULA_THEN_VALUE.match(span, run.end, rest_end)
        if verb is None and _OPENING_PHRASE.match(before):
            verb = _TO_COMMA.match(span, run.end, rest_end)  # "After 60 days, she will spend $16"
        if verb is not None:
            stated = _first_math_run(span[verb.end() : rest_end])
            if stated is not None and _run_value(stated, percent) is not None:
                return _Run(
                    stated.raw,
                    stated.math,
                    verb.end() + stated.start,
                    verb.end() + stated.end,
                    stated.unknown,
                )
    return run


def _read_statement(span: str, percent: PercentMode, *, verbless: bool) -> _Reading:
    """Rules 4, 5, 7 and 8 of the module doc on one answer statement (a line)."""
    span = _clean_latex(span)
    if _NEGATION_AFTER.match(span):
        return _REFUSED  # "Answer: not 5"
    span = _digits_for_words(span)
    first_sentence = _SENTENCE_END.search(span)
    # "the answer is correct. We have 20 left": the value is stated in the phrase's own sentence.
    run = _first_math_run(span[: first_sentence.start()] if first_sentence else span)
    if run is None:
        return _Reading()
    if verbless:
        run = _main_clause(span, run, percent)
    value = _run_value(run, percent)
    if value is None:
        return _Reading()
    goes_on = span[run.end :].lstrip().startswith("=")
    end = _SENTENCE_END.search(span, run.end)
    suffix = span[run.end : end.start() if end else len(span)]
    joined = _OR_AFTER.match(suffix) or _AND_AFTER.match(suffix) or _LIST_AFTER.match(suffix)
    if joined is None and _HEDGE_BEFORE.search(span, 0, run.start):
        joined = _HEDGE_AFTER.match(suffix)  # "between 3 and 5", "either 3 or 4"
    if joined is not None:
        other = _first_math_run(suffix[joined.end() :])
        other_value = _run_value(other, percent) if other is not None else None
        if other_value is not None:
            if not _same_answer(value, other_value):
                return _REFUSED  # a hedge between two different values
            if other is not None and _precision(other_value) > _precision(value):
                return _Reading(other, other_value, goes_on=goes_on)  # "1/3, or 0.333": the exact one
    return _Reading(run, value, goes_on=goes_on)


def _answer_block(text: str, start: int, limit: int) -> list[str]:
    """The lines after an answer phrase's own line, up to `limit` (bounded)."""
    block = text[start : min(limit, start + _BLOCK_CHARS)]
    return block.split("\n")[1 : 1 + _BLOCK_LINES]


def _phrase_value(
    text: str, marker: str, phrase: re.Match[str], limit: int, percent: PercentMode
) -> _Reading:
    """What one answer phrase says: its line, or the final statement of the block it opens."""
    if marker == "answer" and (phrase.group("neg1") or phrase.group("neg2")):
        return _REFUSED  # "the answer is not 5", "the answer isn't 5"
    if marker == _BOXED:
        return _read_statement(_boxed_content(text, phrase.end()), percent, verbless=False)
    verbless = marker in ("a:", "答") or (marker == "answer" and phrase.group("colon") is not None)
    end = min(limit, phrase.end() + _SPAN_CHARS)
    line = text[phrase.end() : end].split("\n", 1)[0]
    reading = _read_statement(line, percent, verbless=verbless)
    if reading.refused:
        return reading
    lines = _answer_block(text, phrase.end(), limit)
    following = next((ln for ln in lines if ln.strip()), "")
    if reading.value is None and any(ch.isalnum() for ch in line):
        return reading  # "is correct. We have 20 left": a statement, and not of a number
    if reading.value is not None and not reading.goes_on and not following.lstrip().startswith("="):
        return reading
    # "The answer is:\n\n42 + 66 = 108", "Answer:\n...\nTotal: 160 + 80 + 20 = 260 sheep.": the
    # statement that closes the block.
    final = reading if reading.value is not None else None
    for block_line in lines:
        label = _LIST_LABEL.match(block_line)
        statement = _read_statement(
            block_line[label.end() :] if label else block_line, percent, verbless=True
        )
        if statement.refused or statement.value is not None:
            final = statement
    return final or reading


def _cut_off(rest: str) -> bool:
    """Does the text stop inside the statement after its last phrase (nothing, or no sentence end)?"""
    rest = rest.strip()
    return not rest or ("\n" not in rest and not rest.endswith((".", "!", "?", "。", ")", "$")))


def _is_restatement(marker: str, phrase: re.Match[str]) -> bool:
    if marker != "answer":
        return False
    form = phrase.group("form") or phrase.group("paren") or ""
    return _RESTATED_FORM.search(form) is not None


def _phrase_reading(text: str, percent: PercentMode) -> _Reading | None:
    """Rules 2-9 of the module doc on `text`; None when the text has no answer phrase at all."""
    lowered = text.translate(_ASCII_LOWER)  # str.lower() may change the length ("İ")
    limit = len(text)
    restated: _Reading | None = None
    found = False
    for _ in range(_MAX_PHRASES):
        last = _last_phrase(text, lowered, limit)
        if last is None:
            break
        found = True
        marker, phrase = last
        reading = _phrase_value(text, marker, phrase, limit, percent)
        if reading.refused:
            return reading  # a negation or hedge, even under a later restatement of it
        if reading.value is not None:
            if restated is None and _is_restatement(marker, phrase):
                restated = reading  # "12.5. The answer in words is twelve point five": look back
            else:
                return reading
        if reading.value is None and limit == len(text) and _cut_off(text[phrase.end() :]):
            return reading  # "... So the answer is": cut off before the answer, not a number-less one
        limit = phrase.start()  # no readable value (or a restatement): an earlier phrase may have one
    if restated is not None:
        return restated
    return _Reading() if found else None


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
