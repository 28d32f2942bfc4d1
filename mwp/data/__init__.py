"""Datasets, files and text: load problems, read and write JSON lines, build student examples."""

from __future__ import annotations

from mwp.data.artifact import DistilledRow, read_distilled, write_distilled
from mwp.data.format_names import EVAL_FORMATS, FORMATS, Format
from mwp.data.formats import (
    COT_TRIGGER,
    Example,
    answer_target,
    build_example,
    build_source,
    cot_target,
    gold_answer_text,
    sample_exemplars,
    token_counter,
)
from mwp.data.io import (
    DataError,
    append_jsonl,
    encode_jsonl_line,
    parse_jsonl_line,
    read_complete_jsonl,
    read_json,
    read_jsonl,
    read_jsonl_lines,
    scan_jsonl,
    write_json,
    write_jsonl,
)
from mwp.data.loaders import (
    available_datasets,
    available_splits,
    canonical_name,
    find_chinese_numbers,
    join_body_question,
    load_problems,
    match_svamp_teacher_rows,
    resolve_data_dir,
)
from mwp.data.problem import Problem
from mwp.data.text import ANSWER_PREFIX, answer_sentence, to_student_text

__all__ = [
    "ANSWER_PREFIX",
    "COT_TRIGGER",
    "EVAL_FORMATS",
    "FORMATS",
    "DataError",
    "DistilledRow",
    "Example",
    "Format",
    "Problem",
    "answer_sentence",
    "answer_target",
    "append_jsonl",
    "available_datasets",
    "available_splits",
    "build_example",
    "build_source",
    "canonical_name",
    "cot_target",
    "encode_jsonl_line",
    "find_chinese_numbers",
    "gold_answer_text",
    "join_body_question",
    "load_problems",
    "match_svamp_teacher_rows",
    "parse_jsonl_line",
    "read_complete_jsonl",
    "read_distilled",
    "read_json",
    "read_jsonl",
    "read_jsonl_lines",
    "resolve_data_dir",
    "sample_exemplars",
    "scan_jsonl",
    "to_student_text",
    "token_counter",
    "write_distilled",
    "write_json",
    "write_jsonl",
]
