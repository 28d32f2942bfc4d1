"""`mwp-judge`: score JSONL completions against gold answers.

Each input row is {"question", "completion", "answer"}; each output row is the input plus `pred`
(the extracted answer as "42", "0.375" or "3/8", or null) and `correct`. A summary goes to stderr.
Gold answers may be numbers or strings such as "9 (apples)", "3/4", "50%", "1,234".

The rules (`mwp-judge --help` prints them in full, from `mwp.verify.extract` and
`mwp.verify.compare`):

- extraction: the run-on continuation ("\\n\\nQ: ...") is cut; strict mode reads the last answer
  phrase with a readable value ("The answer is", "the answer (arabic numerals) is", a final "A: 26"
  line, "Answer:", "Final answer:", "####", "\\boxed{}", "答案是", "答："), a restatement in words
  giving way to the digits before it; it evaluates a calculation after the phrase exactly (its
  final statement when the working runs on below the phrase), reads numbers in words ("twelve
  point five"), and gives no answer for a negation or a hedge between different values;
  flexible mode takes the last number only when there is no answer phrase at all;
- comparison: exact on rationals, plus float round-off (relative 1e-9) and a decimal prediction
  rounded to its own stated places; a "50%" gold matches 1/2 and 50, a "50%" prediction reads 50.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from mwp.verify import compare, extract
from mwp.verify.bbh_answers import bbh_matches, extract_bbh_answer
from mwp.verify.compare import gold_matches
from mwp.verify.extract import cut_run_on, extract_answer
from mwp.verify.numbers import format_number, parse_number

__all__ = ["JudgeInputError", "JudgeSummary", "judge_rows", "main"]

REQUIRED_FIELDS = ("question", "completion", "answer")
EXIT_BAD_INPUT = 2


class JudgeInputError(ValueError):
    """A malformed input row; the message names the input and the line."""


@dataclass
class JudgeSummary:
    n: int = 0
    correct: int = 0
    no_answer: int = 0

    def line(self) -> str:
        accuracy = 100 * self.correct / self.n if self.n else 0.0
        return f"n={self.n}, correct={self.correct}, accuracy={accuracy:.2f}%, no-answer={self.no_answer}"


def _read_rows(stream: IO[str], source: str, numeric: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgeInputError(
                f"{source}:{line_number}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(row, dict):
            raise JudgeInputError(f"{source}:{line_number}: expected a JSON object, got {type(row).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise JudgeInputError(f"{source}:{line_number}: missing field(s) {', '.join(missing)}")
        if not isinstance(row["completion"], str):
            raise JudgeInputError(f"{source}:{line_number}: 'completion' must be a string")
        answer = row["answer"]
        if not numeric:
            if not isinstance(answer, str) or not answer.strip():
                raise JudgeInputError(f"{source}:{line_number}: 'answer' must be a non-empty string")
        elif (
            isinstance(answer, bool)
            or not isinstance(answer, str | int | float)
            or parse_number(answer) is None
        ):
            raise JudgeInputError(f"{source}:{line_number}: 'answer' {answer!r} is not a number")
        yield line_number, row


def judge_rows(
    stream: IO[str],
    out: IO[str],
    *,
    source: str = "<stdin>",
    mode: str = "flexible",
    cut: bool = True,
    summary: JudgeSummary | None = None,
    answer_type: str = "number",
) -> JudgeSummary:
    """Judge every row of `stream`, writing (and flushing) each scored row to `out` as it goes.

    `answer_type` is `number` (math word problems) or a BIG-Bench Hard answer type
    (`mwp.verify.bbh_answers.ANSWER_TYPES`, or `bbh:<task>` for that task's type).
    `summary` is updated in place, so a caller still has the counts when a malformed row raises.
    """
    summary = summary if summary is not None else JudgeSummary()
    bbh_type = bbh_answer_type(answer_type)
    for _line_number, row in _read_rows(stream, source, numeric=bbh_type is None):
        if bbh_type is None:
            number = extract_answer(row["completion"], mode=mode, cut=cut)  # type: ignore[arg-type]
            correct = gold_matches(number, row["answer"])
            pred = format_number(number)
        else:
            text = cut_run_on(row["completion"]) if cut else row["completion"]
            pred = extract_bbh_answer(text, bbh_type, mode)  # type: ignore[arg-type]
            correct = bbh_matches(pred, row["answer"], bbh_type)
        summary.n += 1
        summary.correct += correct
        summary.no_answer += pred is None
        out.write(json.dumps({**row, "pred": pred, "correct": correct}, ensure_ascii=False) + "\n")
        out.flush()
    return summary


def bbh_answer_type(answer_type: str) -> str | None:
    """None for math answers, else the BIG-Bench Hard answer type `answer_type` names."""
    from mwp.verify.bbh_answers import ANSWER_TYPES, TASK_ANSWER_TYPES

    if answer_type == "number":
        return None
    if answer_type.startswith("bbh:"):
        task = answer_type.removeprefix("bbh:")
        if task not in TASK_ANSWER_TYPES:
            raise JudgeInputError(
                f"--answer-type {answer_type}: unknown BBH task; known: {', '.join(TASK_ANSWER_TYPES)}"
            )
        return TASK_ANSWER_TYPES[task]
    if answer_type not in ANSWER_TYPES:
        raise JudgeInputError(
            f"--answer-type {answer_type}: use number, bbh:<task> or one of {', '.join(ANSWER_TYPES)}"
        )
    return answer_type


def _rules(module_doc: str | None) -> str:
    """The numbered rules of a module docstring: everything from its "The rules" line on."""
    doc = module_doc or ""
    start = doc.find("The rules")
    return doc[start:].strip() if start >= 0 else doc.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwp-judge",
        description="Add `pred` and `correct` to JSONL rows {question, completion, answer}; summary on stderr.",
        epilog=(
            "ANSWER EXTRACTION\n"
            + _rules(extract.__doc__)
            + "\n\nCOMPARISON WITH THE GOLD ANSWER\n"
            + _rules(compare.__doc__)
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", default="-", help="JSONL file (default: stdin)")
    parser.add_argument(
        "--mode",
        choices=("strict", "flexible"),
        default="flexible",
        help="strict: answer phrases only; flexible: else the last number (default: flexible)",
    )
    parser.add_argument(
        "--answer-type",
        default="number",
        help="number (math word problems, default), bbh:<task>, or a BIG-Bench Hard answer type "
        "(multiple_choice, boolean, yes_no, valid_invalid, number, dyck, words); answers are then strings",
    )
    parser.add_argument(
        "--output", "-o", default="-", help="where to write the scored rows (default: stdout)"
    )
    parser.add_argument(
        "--no-cut-run-on",
        dest="cut",
        action="store_false",
        help="keep a few-shot completion's run-on continuation ('\\n\\nQ: ...') instead of cutting it",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = "<stdin>" if args.input == "-" else args.input
    try:
        stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"mwp-judge: cannot read {source}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"mwp-judge: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = JudgeSummary()
    try:
        judge_rows(
            stream,
            out,
            source=source,
            mode=args.mode,
            cut=args.cut,
            summary=summary,
            answer_type=args.answer_type,
        )
    except JudgeInputError as exc:
        print(f"mwp-judge: {exc}", file=sys.stderr)
        print(f"before the error: {summary.line()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnicodeDecodeError as exc:
        print(f"mwp-judge: {source} is not UTF-8 text: {exc.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if stream is not sys.stdin:
            stream.close()
        if out is not sys.stdout:
            out.close()
    print(summary.line(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
