"""BIG-Bench Hard answers: a second answer type beside the math one, with one matching rule per task kind.

A BBH target is not a number, so the math path (`extract_answer` + `answers_match`) cannot score it
on its own. This module reads a completion the way BBH's CoT prompts end ("... So the answer is
(B).") and compares it with the target by kind. Completions are cut with the math extractor's
`cut_run_on` (a few-shot completion that runs on into "\\n\\nQ: ..." carries answer phrases of
its own), and numeric answers are read by the math extractor itself (`extract_answer`,
`answers_match`), so the two answer types share one reader of numbers and run-ons.

The kinds, found by reading every target of all 27 tasks (6,511 examples; `tests/test_bbh.py`
runs each one through `bbh_matches`):

| task                                    | n   | targets                              | kind              |
|-----------------------------------------|-----|--------------------------------------|-------------------|
| boolean_expressions                     | 250 | True / False                         | `boolean`         |
| causal_judgement                        | 187 | Yes / No                             | `yes_no`          |
| date_understanding                      | 250 | (A)-(F)                              | `multiple_choice` |
| disambiguation_qa                       | 250 | (A)-(C)                              | `multiple_choice` |
| dyck_languages                          | 250 | closing brackets, "] ] >" (59 kinds) | `dyck`            |
| formal_fallacies                        | 250 | valid / invalid                      | `valid_invalid`   |
| geometric_shapes                        | 250 | (B)-(K)                              | `multiple_choice` |
| hyperbaton                              | 250 | (A) / (B)                            | `multiple_choice` |
| logical_deduction_five_objects          | 250 | (A)-(E)                              | `multiple_choice` |
| logical_deduction_seven_objects         | 250 | (A)-(G)                              | `multiple_choice` |
| logical_deduction_three_objects         | 250 | (A)-(C)                              | `multiple_choice` |
| movie_recommendation                    | 250 | (A)-(E); one "Monsters, Inc"         | `multiple_choice` |
| multistep_arithmetic_two                | 250 | integers, "-11520" (185 kinds)       | `number`          |
| navigate                                | 250 | Yes / No                             | `yes_no`          |
| object_counting                         | 250 | integers 2-20                        | `number`          |
| penguins_in_a_table                     | 146 | (A)-(E)                              | `multiple_choice` |
| reasoning_about_colored_objects         | 250 | (A)-(R)                              | `multiple_choice` |
| ruin_names                              | 250 | (A)-(D); two free-text edits         | `multiple_choice` |
| salient_translation_error_detection     | 250 | (A)-(F)                              | `multiple_choice` |
| snarks                                  | 178 | (A) / (B)                            | `multiple_choice` |
| sports_understanding                    | 250 | yes / no (lower case)                | `yes_no`          |
| temporal_sequences                      | 250 | (A)-(D)                              | `multiple_choice` |
| tracking_shuffled_objects_five_objects  | 250 | (A)-(E)                              | `multiple_choice` |
| tracking_shuffled_objects_seven_objects | 250 | (A)-(G)                              | `multiple_choice` |
| tracking_shuffled_objects_three_objects | 250 | (A)-(C)                              | `multiple_choice` |
| web_of_lies                             | 250 | Yes / No                             | `yes_no`          |
| word_sorting                            | 250 | sorted lower-case words (all unique) | `words`           |

Three multiple-choice targets are option text, not a letter: the BBH conversion split an option
at its comma ("Monsters, Inc" became "(A) Monsters" and "(B) Inc"; ruin_names' "dearth, wind, &
fire" and "rita, sue and bob poo"). They match a prediction of the same text (case and spacing
aside) and never a letter.

Matching, per kind: `multiple_choice` compares the option letter ("(B)", "B", "B)" all read as
"(B)"); `boolean`, `yes_no` and `valid_invalid` compare the word ignoring case; `number` compares
exact values (`answers_match`: "24", "24.0" and "$24" are 24); `dyck` compares the bracket
characters only, spacing ignored ("]]>" is "] ] >"); `words` compares the word sequence ignoring
case, commas and spacing.

Modes: `strict` reads the text after the last "the answer is" (a CoT completion), or, when there
is no such phrase, a completion whose first line is one whole answer of the kind (what an
answer-only prompt makes a model write: "(B)", "False", "] ]"; for a choice, any first line is
read as an option text when it is not a letter). `flexible` reads the same places and is lenient
about where in the answer sentence the option stands ("the answer is the third one, (C)"); only a
completion with no answer phrase at all falls back to the last answer-shaped token anywhere ("(C)",
"yes", a number, a bracket run, the last line of words), and there a "(C)" anywhere beats a choice
read as free text. Flexible never reads past the last answer phrase, nor back into the reasoning
before it: a phrase followed by nothing readable ("So the answer is" cut off, "the answer is: ...
let me check (C)") has no answer in both modes.

No answer, in both modes, for what a careful reader would not credit either:
- a hedge or a pair of different options, as the number judge refuses "3 or 5": "(A) or (C)",
  "either (A) or (B)", "(A), (B) and (D)", "yes or no";
- an explicit non-answer after the phrase ("none of the options", "empty", "cannot be determined",
  "not (A)") or as a completion's last line without one ("None of the options fit.").

`benchmarks/bbh_agreement.py` scores code-davinci-002's outputs published in the BBH repository
against the accuracy published with them (the outputs are not bundled); on the tasks checked
there, strict mode gives the published figure exactly.
"""

from __future__ import annotations

import re
from fractions import Fraction
from itertools import pairwise
from typing import Literal, get_args

from mwp.verify.compare import answers_match
from mwp.verify.extract import cut_run_on, extract_answer
from mwp.verify.numbers import format_number, parse_number

__all__ = [
    "ANSWER_TYPES",
    "TASK_ANSWER_TYPES",
    "BBHAnswerType",
    "BBHMode",
    "bbh_matches",
    "extract_bbh_answer",
    "normalize_bbh_target",
]

BBHAnswerType = Literal["multiple_choice", "boolean", "yes_no", "valid_invalid", "number", "dyck", "words"]
BBHMode = Literal["strict", "flexible"]
ANSWER_TYPES: tuple[str, ...] = get_args(BBHAnswerType)

_MC = "multiple_choice"
TASK_ANSWER_TYPES: dict[str, BBHAnswerType] = {
    "boolean_expressions": "boolean",
    "causal_judgement": "yes_no",
    "date_understanding": _MC,
    "disambiguation_qa": _MC,
    "dyck_languages": "dyck",
    "formal_fallacies": "valid_invalid",
    "geometric_shapes": _MC,
    "hyperbaton": _MC,
    "logical_deduction_five_objects": _MC,
    "logical_deduction_seven_objects": _MC,
    "logical_deduction_three_objects": _MC,
    "movie_recommendation": _MC,
    "multistep_arithmetic_two": "number",
    "navigate": "yes_no",
    "object_counting": "number",
    "penguins_in_a_table": _MC,
    "reasoning_about_colored_objects": _MC,
    "ruin_names": _MC,
    "salient_translation_error_detection": _MC,
    "snarks": _MC,
    "sports_understanding": "yes_no",
    "temporal_sequences": _MC,
    "tracking_shuffled_objects_five_objects": _MC,
    "tracking_shuffled_objects_seven_objects": _MC,
    "tracking_shuffled_objects_three_objects": _MC,
    "web_of_lies": "yes_no",
    "word_sorting": "words",
}

# "So the answer is (B).", "the answer is: valid"; the last one counts.
_PHRASE = re.compile(r"\banswer\s+is\s*:?", re.IGNORECASE)
_SPAN_CHARS = 600  # word_sorting answers run to ~250 characters
_LETTER = re.compile(r"^\(\s*([A-Z])\s*\)|^([A-Z])(?=$|[).,:;\s])")
_LAST_LETTER = re.compile(r"\(([A-Z])\)")
_WORD_CHOICES: dict[str, tuple[str, str]] = {
    "boolean": ("true", "false"),
    "yes_no": ("yes", "no"),
    "valid_invalid": ("valid", "invalid"),
}
# An answer token of a kind that names one option: "(B)", "yes", "invalid".
_TOKENS: dict[str, re.Pattern[str]] = {
    _MC: re.compile(r"\(\s*([A-Z])\s*\)"),
    **{kind: re.compile(rf"\b({'|'.join(words)})\b", re.IGNORECASE) for kind, words in _WORD_CHOICES.items()},
}
# Two different options joined as alternatives or as a pair: "(A) or (C)", "yes or no", "(A), (B) and (D)".
_JOINED = re.compile(
    r"\s*,?\s*(?:or|and/or|and|/|,)\s*(?:(?:maybe|perhaps|possibly|also)\s+)?", re.IGNORECASE
)
# A phrase that says there is no answer: "the answer is none of the options", "... cannot be determined".
_NON_ANSWER = re.compile(
    r"(?:(?:that|it|this)\s+){0,2}(?:(?:is|was|would\s+be)\s+)?"
    r"(?:none|nothing|empty|unknown|undetermined|undeterminable|indeterminate|undefined|unclear|uncertain"
    r"|ambiguous|inconclusive|insufficient|impossible|neither|not|cannot|can't|can\s+not|n/a"
    r"|no\s+(?:answer|option|options|choice|correct|valid|solution|such|one|idea)|there\s+is\s+no)(?![A-Za-z])",
    re.IGNORECASE,
)
# The same said without an answer phrase, anywhere in a completion's last line: "None of the options fit."
_NO_ANSWER_STATEMENT = re.compile(
    r"\b(?:cannot|can't|can\s+not)\s+be\s+(?:determined|answered|known|told|found)"
    r"|\bnone\s+of\s+(?:the\s+|these\s+)?(?:options|above|choices|answers)"
    r"|\bno\s+(?:correct\s+|valid\s+)?(?:answer|option)s?\b|\bnot\s+enough\s+information"
    r"|\bimpossible\s+to\s+(?:tell|determine|say|know)|\b(?:undetermined|indeterminate)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[;\n]")
_CLOSERS = set(")]}>")
_BRACKETS = set("()[]{}<>")
_BRACKET_RUN = re.compile(r"[()\[\]{}<>](?:[ \t]*[()\[\]{}<>])*")
_QUOTES = "\"'`“”‘’*"


def _check(answer_type: str, mode: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {list(ANSWER_TYPES)}, got {answer_type!r}")
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")


def _clean_span(span: str) -> str:
    span = span.strip().strip(_QUOTES).strip()
    while span.endswith((".", "!")):
        span = span[:-1].rstrip()
    return span.strip(_QUOTES).strip()


def _plain_text(text: str) -> str:
    return " ".join(_clean_span(text).lower().split())


def _token_value(match: re.Match[str], answer_type: str) -> str:
    return f"({match.group(1)})" if answer_type == _MC else match.group(1).lower()


def _options_named(sentence: str, answer_type: str) -> set[str] | None:
    """The distinct options that `sentence` names, or None when it joins two different ones ("(A) or (C)")."""
    pattern = _TOKENS.get(answer_type)
    if pattern is None:
        return set()
    matches = list(pattern.finditer(sentence))
    for first, second in pairwise(matches):
        between = sentence[first.end() : second.start()]
        joined = _JOINED.fullmatch(between)
        if joined and _token_value(first, answer_type) != _token_value(second, answer_type):
            return None  # a hedge, or a pair of answers: no single answer
    return {_token_value(m, answer_type) for m in matches}


def _says_no_answer(span: str, answer_type: str) -> bool:
    # A sorted word list may start with "none" or "not": for words only the list itself counts.
    return answer_type != "words" and _NON_ANSWER.match(span) is not None


def _states_no_answer(lines: list[str], answer_type: str) -> bool:
    return answer_type != "words" and bool(lines) and _NO_ANSWER_STATEMENT.search(lines[-1]) is not None


def _sentence(span: str) -> str:
    end = _SENTENCE_END.search(span)
    return span[: end.start()] if end else span


def _read(span: str, answer_type: str, *, whole: bool) -> str | None:
    """The canonical answer in `span` (the text after an answer phrase), or None.

    `whole=True` (an answer-only completion) accepts the span only if all of it is the answer.
    """
    span = _clean_span(span)
    if not span:
        return None
    if answer_type == _MC:
        match = _LETTER.match(span)
        if match:
            letter = match.group(1) or match.group(2)
            rest = span[match.end() :].strip()
            if not whole or not rest or not any(ch.isalnum() for ch in rest[:1]):
                return f"({letter})"
            return None
        return _plain_text(span)
    if answer_type in _WORD_CHOICES:
        first = re.match(r"[A-Za-z]+", span)
        word = first.group(0).lower() if first else ""
        if word not in _WORD_CHOICES[answer_type]:
            return None
        if whole and span[len(word) :].strip():
            return None
        return word
    if answer_type == "number":
        value = parse_number(span.split()[0] if not whole else span)
        return format_number(value) if value is not None else None
    if answer_type == "dyck":
        if whole and any(not (ch in _BRACKETS or ch.isspace()) for ch in span):
            return None
        brackets = [ch for ch in span if ch in _BRACKETS]
        return " ".join(brackets) if brackets else None
    words = [w for w in re.split(r"[\s,]+", span.lower()) if w]
    return " ".join(words) if words else None


def _read_answer(span: str, answer_type: str, mode: str, *, whole: bool) -> str | None:
    """What an answer line says: one answer, or None for a non-answer, a hedge or nothing readable.

    Strict takes the answer at the start of the line; flexible also takes the one option that the
    line's first sentence names ("the answer is the third one, (C)"). Neither looks past the line.
    """
    span = _clean_span(span)
    if not span or _says_no_answer(span, answer_type):
        return None
    sentence = _sentence(span)
    if answer_type != "words" and _NO_ANSWER_STATEMENT.search(sentence):
        return None
    named = _options_named(sentence, answer_type)
    if named is None:
        return None
    found = _read(span, answer_type, whole=whole)
    if (
        mode == "flexible"
        and len(named) == 1
        and (found is None or (answer_type == _MC and found[:1] != "("))
    ):
        return named.pop()
    return found


def extract_bbh_answer(text: str, answer_type: BBHAnswerType, mode: BBHMode = "strict") -> str | None:
    """The answer of a BBH completion in canonical form, or None when there is none.

    Canonical forms: "(B)" (or the option text, lower case, for a free-text choice), "true"/"false",
    "yes"/"no", "valid"/"invalid", a number as `format_number` writes it ("-219", "3/8"),
    space-separated brackets ("] } ]"), lower-case words ("arson aspect census").
    """
    _check(answer_type, mode)
    text = cut_run_on(text)
    phrases = list(_PHRASE.finditer(text))
    lines = [line for line in text.split("\n") if line.strip()]
    if answer_type == "number":
        value: Fraction | None = extract_answer(text, mode="strict")
        if value is None and not phrases and lines:
            value = parse_number(_clean_span(lines[0]))
        if value is None and mode == "flexible" and not _states_no_answer(lines, answer_type):
            value = extract_answer(text, mode="flexible")
        return format_number(value) if value is not None else None
    if phrases:
        # The last phrase decides: what follows it is the answer, or there is none. Flexible mode
        # never reads on past it, nor back into the reasoning.
        span = text[phrases[-1].end() : phrases[-1].end() + _SPAN_CHARS].lstrip().split("\n", 1)[0]
        return _read_answer(span, answer_type, mode, whole=False)
    if (
        not lines
        or _says_no_answer(_clean_span(lines[-1]), answer_type)
        or _states_no_answer(lines, answer_type)
    ):
        return None  # "None of the options fit." ends the text: whatever came before is not its answer
    found = _read_answer(lines[0], answer_type, mode, whole=True)
    if mode == "strict" or (found is not None and (answer_type != _MC or found.startswith("("))):
        return found
    return _last_anywhere(text, answer_type) or found  # a letter anywhere beats free text


def _last_anywhere(text: str, answer_type: str) -> str | None:
    pattern = _TOKENS.get(answer_type)
    if pattern is not None:
        matches = list(pattern.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        if len(matches) > 1 and _options_named(text[matches[-2].start() : last.end()], answer_type) is None:
            return None  # "... (A) or (C)": the text ends on a hedge
        return _token_value(last, answer_type)
    if answer_type == "dyck":
        runs = _BRACKET_RUN.findall(text)
        return " ".join(ch for ch in runs[-1] if ch in _BRACKETS) if runs else None
    lines = [line for line in text.strip().split("\n") if line.strip()]
    return _read(lines[-1], answer_type, whole=False) if lines else None


def normalize_bbh_target(target: str, answer_type: BBHAnswerType) -> str:
    """A gold target in the canonical form `extract_bbh_answer` returns; a malformed one raises ValueError."""
    _check(answer_type, "strict")
    if answer_type == _MC:
        letter = re.fullmatch(r"\(([A-Z])\)", target.strip())
        return f"({letter.group(1)})" if letter else _plain_text(target)
    canonical = _read(target, answer_type, whole=True)
    if canonical is None:
        raise ValueError(f"{target!r} is not a {answer_type} target")
    if answer_type == "dyck" and any(ch not in _CLOSERS for ch in canonical.replace(" ", "")):
        raise ValueError(f"{target!r} is not a run of closing brackets")
    return canonical


def bbh_matches(pred: str | None, target: str, answer_type: BBHAnswerType) -> bool:
    """Is an extracted prediction (`extract_bbh_answer`'s output, or raw answer text) the target?"""
    if pred is None:
        return False
    gold = normalize_bbh_target(target, answer_type)
    if answer_type == "number":
        return answers_match(parse_number(pred), parse_number(gold))
    canonical = _read(pred, answer_type, whole=False) if answer_type != _MC else None
    if answer_type == _MC:
        letter = re.fullmatch(r"\(([A-Z])\)", pred.strip())
        canonical = f"({letter.group(1)})" if letter else _plain_text(pred)
    if answer_type == "dyck" and canonical is not None:
        return canonical.replace(" ", "") == gold.replace(" ", "")
    return canonical == gold
