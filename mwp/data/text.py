"""Rewrite text so the Flan-T5 (T5 sentencepiece) vocabulary keeps everything that matters.

The T5 vocabulary has no newline and maps `<`, `{`, `}`, `^`, `~`, `\\`, `×`, `÷`, `−`, `≤`, `≥`,
`≠`, `≈`, `π`, `√`, `¢`, `¥`, `½`-style fractions, accented letters such as `ñ` and more to
`<unk>`; its NFKC normaliser also turns `²` into a plain `2`. `to_student_text` rewrites all of these
into tokens the vocabulary has, leaving every digit string as it was:

- GSM8K calculator notes `<<48/2=24>>` are dropped: the result always follows them in the text
  (27,997 of the 27,998 notes in GSM8K are followed by the same value, the last by the same
  fraction), so they only lengthen targets.
- A GSM8K final line `#### 72` becomes `The answer is 72.`, the answer sentence every format uses.
- Line breaks become sentence breaks: `". "` after a line without closing punctuation, else `" "`.
- `^` and superscript digits become `**` (`W^2`, `cm³` -> `W**2`, `cm**3`); `{`/`}` become `(`/`)`.
- `<` becomes "is less than", `<=`/`≤` "is at most", `≥` `>=`, `≠` `!=`, `~`/`≈` "about".
- `×`/`·` become `*`, `÷` `/`, `−` `-`, `½` `1/2` (`2½` -> `2 1/2`), `√` `sqrt`, `π` `pi`,
  `¢25`/`25¢` `25 cents`; simple LaTeX (`\\frac{a}{b}`, `\\times`, `\\boxed{}`, `\\$`...) is unwrapped.

NFKC, which the tokenizer applies anyway, is applied too (full-width "，？" become ",?"), so
encode -> decode gives back the rewritten text up to spacing. The rewrite is idempotent and
tokenizer-independent (tests check it against the real tokenizer).
"""

from __future__ import annotations

import re
import unicodedata

# Teacher text is untrusted: refuse to rewrite anything unreasonably long (regexes stay linear anyway).
MAX_TEXT_CHARS = 200_000

ANSWER_PREFIX = "The answer is"

# GSM8K calculator notes `<<48/2=24>>` (the rewrite drops them; the span alignment skips them).
CALCULATOR_NOTE = re.compile(r"<<[^<>\n]*>>")
_FINAL_ANSWER_LINE = re.compile(r"^[ \t]*####[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_LINE_BREAKS = re.compile(r"\r\n|[\r\u2028\u2029\x85\v\f]")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_SUPERSCRIPT_RUN = re.compile(r"[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_VULGAR_FRACTION = re.compile(r"(\d?)([\u00bc-\u00be\u2150-\u215e])")

# Simple LaTeX a teacher model may emit; applied before braces and backslashes are rewritten.
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SQRT = re.compile(r"\\sqrt\s*\{([^{}]*)\}")
_LATEX_WRAPPER = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_LATEX_WORDS = {
    "times": " * ",
    "cdot": " * ",
    "div": " / ",
    "le": " <= ",
    "leq": " <= ",
    "ge": " >= ",
    "geq": " >= ",
    "neq": " != ",
    "ne": " != ",
    "approx": " ~ ",
    "pi": "pi",
    "infty": "infinity",
    "pm": "+/-",
    "sqrt": "sqrt",
    "left": "",
    "right": "",
    "quad": " ",
    "qquad": " ",
}
_ATOM = re.compile(r"[\w.]+")
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
_LATEX_ESCAPE = re.compile(r"\\([$%&#_ ,;:!])")
_LATEX_DELIMITER = re.compile(r"\\[()\[\]]")

_AMOUNT = r"(\d+(?:,\d{3})*(?:\.\d+)?)"
_CENTS_BEFORE = re.compile(r"¢\s*" + _AMOUNT)
_CENTS_AFTER = re.compile(r"(\d)\s*¢")
_YEN_BEFORE = re.compile(r"¥\s*" + _AMOUNT)

_SYMBOLS = {
    "×": " * ",
    "·": " * ",
    "⋅": " * ",
    "∙": " * ",
    "÷": " / ",
    "−": "-",
    "≤": " <= ",
    "⩽": " <= ",
    "≥": " >= ",
    "⩾": " >= ",
    "≠": " != ",
    "≈": " ~ ",
    "π": "pi",
    "±": "+/-",
    "∞": "infinity",
    "√": "sqrt ",
    "¢": " cents ",
    "¥": " yen ",
    "`": "'",
    "⁄": "/",
}
_SYMBOL_CHARS = re.compile("[" + re.escape("".join(_SYMBOLS)) + "]")

# Cyrillic and Greek capitals that stand in for Latin ones in scraped English text.
_HOMOGLYPHS = str.maketrans("АВЕКМНОРСТХаеорсухΑΒΕΗΙΚΜΝΟΡΤΧΥΖ", "ABEKMHOPCTXaeopcyxABEHIKMNOPTXYZ")

_AT_MOST = re.compile(r"[^\S\n]*<=[^\S\n]*")
_LESS_THAN = re.compile(r"[^\S\n]*<[^\S\n]*")
_ABOUT = re.compile(r"~[^\S\n]*")
_SQRT_SPACE = re.compile(r"sqrt (?=[(])")
_SPACES = re.compile(r"[^\S\n]+")
_CLOSING = ".!?:;,"


def to_student_text(text: str) -> str:
    """Rewrite `text` into one line the Flan-T5 tokenizer encodes without `<unk>` or silent loss."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text of {len(text)} characters exceeds the {MAX_TEXT_CHARS}-character limit")
    text = _LINE_BREAKS.sub("\n", text)
    text = _ZERO_WIDTH.sub("", text)
    text = CALCULATOR_NOTE.sub("", text)
    text = _FINAL_ANSWER_LINE.sub(_answer_line, text)
    text = _unwrap_latex(text)
    # Before NFKC, which would turn "²" into a bare "2" and "½" into "1⁄2" glued to a preceding digit.
    text = _SUPERSCRIPT_RUN.sub(lambda m: "**" + m.group(0).translate(_SUPERSCRIPTS), text)
    text = _VULGAR_FRACTION.sub(_vulgar_fraction, text)
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_HOMOGLYPHS)
    text = _strip_accents(text)
    text = _CENTS_BEFORE.sub(r"\1 cents", text)
    text = _CENTS_AFTER.sub(r"\1 cents", text)
    text = _YEN_BEFORE.sub(r"\1 yen", text)
    text = _SYMBOL_CHARS.sub(lambda m: _SYMBOLS[m.group(0)], text)
    text = _SQRT_SPACE.sub("sqrt", text)
    text = _AT_MOST.sub(" is at most ", text)
    text = _LESS_THAN.sub(" is less than ", text)
    text = _ABOUT.sub("about ", text)
    text = text.replace("^", "**").replace("{", "(").replace("}", ")").replace("\\", "/")
    return _join_lines(text)


def answer_sentence(answer: str) -> str:
    """The final-answer sentence every target ends with: "The answer is 42."."""
    answer = answer.strip()
    return f"{ANSWER_PREFIX} {answer.removesuffix('.')}."


def _answer_line(match: re.Match[str]) -> str:
    return answer_sentence(match.group(1)) if match.group(1) else ""


def _vulgar_fraction(match: re.Match[str]) -> str:
    whole, fraction = match.groups()
    plain = unicodedata.normalize("NFKC", fraction).replace("⁄", "/")
    return f"{whole} {plain}" if whole else plain


def _unwrap_latex(text: str) -> str:
    if "\\" not in text:
        return text
    text = _LATEX_DELIMITER.sub(" ", text)
    text = _LATEX_ESCAPE.sub(lambda m: " " if m.group(1) in ",;:! " else m.group(1), text)
    for _ in range(4):  # nested \frac{\frac{a}{b}}{c}: innermost first
        unwrapped = _LATEX_FRACTION.sub(_latex_fraction, text)
        unwrapped = _LATEX_SQRT.sub(r"sqrt(\1)", unwrapped)
        unwrapped = _LATEX_WRAPPER.sub(r"\1", unwrapped)
        if unwrapped == text:
            break
        text = unwrapped
    text = text.replace("\\\\", "\n")
    return _LATEX_COMMAND.sub(lambda m: _LATEX_WORDS.get(m.group(1), m.group(1)), text)


def _latex_fraction(match: re.Match[str]) -> str:
    parts = [part.strip() for part in match.groups()]
    return "/".join(part if _ATOM.fullmatch(part) else f"({part})" for part in parts)


def _strip_accents(text: str) -> str:
    if text.isascii():
        return text
    out = []
    for char in text:
        if char.isascii() or not char.isalpha():
            out.append(char)
            continue
        base = unicodedata.normalize("NFD", char)
        if base[0].isascii() and all(unicodedata.category(mark) == "Mn" for mark in base[1:]):
            out.append(base[0])
        else:
            out.append(char)
    return "".join(out)


def _join_lines(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    out: list[str] = []
    for line in lines:
        if out and out[-1][-1] not in _CLOSING:
            out[-1] += "."
        out.append(line)
    return " ".join(out)
