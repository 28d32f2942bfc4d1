"""`mwp-judge`: score JSONL completions against gold answers.

Each input row is {"question", "completion", "answer"}; each output row is the input plus `pred`
(the extracted answer as "42", "0.375" or "3/8", or null) and `correct`. A summary goes to stderr.
Gold answers may be numbers or strings such as "9 (apples)", "3/4", "50%", "1,234".

The rules (`mwp-judge --help` prints them in full, from `mwp.verify.extract` and
`mwp.verify.compare`):

- extraction: the run-on continuation ("\\n\\nQ: ...") is cut; strict mode reads the last answer
  phrase ("The answer is", "the answer (arabic numerals) is", a final "A: 26" line, "Answer:",
  "Final answer:", "####", "\\boxed{}", "答案是", "答："), evaluates a calculation after it exactly,
  reads integers in words, and gives no answer for a negation or a hedge between different values;
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
from mwp.verify.compare import gold_matches
from mwp.verify.extract import extract_answer
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


def _read_rows(stream: IO[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
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
        if (
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
) -> JudgeSummary:
    """Judge every row of `stream`, writing (and flushing) each scored row to `out` as it goes.

    `summary` is updated in place, so a caller still has the counts when a malformed row raises.
    """
    summary = summary if summary is not None else JudgeSummary()
    for _line_number, row in _read_rows(stream, source):
        pred = extract_answer(row["completion"], mode=mode, cut=cut)  # type: ignore[arg-type]
        correct = gold_matches(pred, row["answer"])
        summary.n += 1
        summary.correct += correct
        summary.no_answer += pred is None
        out.write(
            json.dumps({**row, "pred": format_number(pred), "correct": correct}, ensure_ascii=False) + "\n"
        )
        out.flush()
    return summary


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
        judge_rows(stream, out, source=source, mode=args.mode, cut=args.cut, summary=summary)
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
