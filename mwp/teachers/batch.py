"""Batch files: sampling requests as OpenAI Batch API JSONL (also what `vllm run-batch` reads), and back.

    python -m mwp.teachers.batch export --dataset multiarith --split train --prompt cot_fewshot \
        --teacher openai --out batch_input.jsonl teacher.model=gpt-4o-mini teacher.n=8
    # upload to the Batch API, or: vllm run-batch -i batch_input.jsonl -o results.jsonl --model ...
    mwp stage=distill dataset=multiarith teacher=batch_file \
        teacher.results=results.jsonl teacher.requests=batch_input.jsonl

Each input line asks for the samples `first`..`last` of one problem; its custom_id is
"<problem id>#s<first>-<last>", so results map back to problems and sample indices.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mwp.data.io import DataError, read_jsonl_lines, write_jsonl
from mwp.teachers.base import (
    Completion,
    SamplingParams,
    Teacher,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
)
from mwp.teachers.openai_compat import completions_from_body, request_body

log = logging.getLogger(__name__)

URLS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_SAMPLES = "#s"


def custom_id(problem_id: str, first: int, count: int) -> str:
    return f"{problem_id}{_SAMPLES}{first}-{first + count - 1}"


def parse_custom_id(value: str) -> tuple[str, int, int]:
    """(problem id, first sample index, sample count) of a custom_id written by `export_batch`."""
    problem_id, marker, span = value.rpartition(_SAMPLES)
    first, dash, last = span.partition("-")
    if not marker or not dash or not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise ValueError(f"custom_id {value!r} is not '<problem id>#s<first>-<last>'")
    return problem_id, int(first), int(last) - int(first) + 1


def export_batch(
    requests: Sequence[TeacherRequest],
    params: SamplingParams,
    model: str,
    path: str | os.PathLike[str],
    *,
    endpoint: str = "chat",
    samples_per_line: int | None = None,
    max_tokens_param: str = "max_tokens",
) -> int:
    """Write one Batch API line per problem (or per `samples_per_line` samples); returns the line count."""
    if endpoint not in URLS:
        raise ValueError(f"endpoint must be one of {sorted(URLS)}, got {endpoint!r}")
    per_line = samples_per_line or params.n
    if per_line < 1:
        raise ValueError(f"samples_per_line must be >= 1, got {per_line}")
    seen: set[str] = set()
    lines = []
    for request in requests:
        if request.problem_id in seen:
            raise ValueError(f"problem id {request.problem_id!r} occurs twice; custom_ids must be unique")
        seen.add(request.problem_id)
        for first in range(0, params.n, per_line):
            size = min(per_line, params.n - first)
            lines.append(
                {
                    "custom_id": custom_id(request.problem_id, first, size),
                    "method": "POST",
                    "url": URLS[endpoint],
                    "body": request_body(request, params, model, endpoint, first, size, max_tokens_param),
                }
            )
    write_jsonl(path, lines)
    return len(lines)


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line, row)` of a batch file; a bad line is a TeacherError (file:line), as every teacher failure is."""
    try:
        yield from read_jsonl_lines(path)
    except DataError as err:
        raise TeacherError(str(err)) from None


def _requests_by_id(path: Path) -> dict[str, tuple[TeacherRequest, str, SamplingParams]]:
    """custom_id -> (request, endpoint, sampling parameters) from an exported input file."""
    found: dict[str, tuple[TeacherRequest, str, SamplingParams]] = {}
    for number, row in _read_lines(path):
        try:
            problem_id, _, _ = parse_custom_id(row["custom_id"])
            body = row["body"]
            endpoint = "chat" if "messages" in body else "completions"
            if endpoint == "chat":
                system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
                prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            else:
                system, prompt = None, body["prompt"]
            logprobs = body.get("top_logprobs") if endpoint == "chat" else body.get("logprobs")
            params = SamplingParams(
                n=int(body.get("n") or 1),
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                stop=tuple(body.get("stop") or ()),
                top_logprobs=int(logprobs or 0),
            )
        except (KeyError, TypeError, ValueError, StopIteration) as err:
            raise TeacherError(f"{path}:{number}: not a batch request line: {err!r}") from err
        found[row["custom_id"]] = (TeacherRequest(problem_id, prompt, system), endpoint, params)
    return found


def import_batch(
    path: str | os.PathLike[str], requests_path: str | os.PathLike[str] | None = None
) -> Iterator[TeacherResponse]:
    """Responses from a Batch API / `vllm run-batch` results file, one per problem, samples in index order.

    With `requests_path` (the exported input), responses carry the original prompt and system text
    and honour its stop sequences; without it the request has the problem id and an empty prompt.
    Failed lines (an `error`, or a status other than 200) are skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"batch results file {path} does not exist")
    originals = _requests_by_id(Path(requests_path)) if requests_path else {}
    samples: dict[str, dict[int, Completion]] = {}
    requests: dict[str, TeacherRequest] = {}
    failed = lines = 0
    short: list[tuple[str, int, int]] = []  # (custom_id, choices given, choices asked)
    for number, row in _read_lines(path):
        lines += 1
        try:
            cid = row["custom_id"]
            problem_id, first, count = parse_custom_id(cid)
        except (KeyError, ValueError) as err:
            raise TeacherError(f"{path}:{number}: {err}") from err
        response = row.get("response") or {}
        status = response.get("status_code")
        if row.get("error") or status != 200:
            failed += 1
            log.warning("%s:%d: %s failed (status %s): %s", path, number, cid, status, row.get("error"))
            continue
        body = response.get("body") or {}
        original = originals.get(cid)
        if originals and original is None:
            raise TeacherError(f"{path}:{number}: custom_id {cid!r} is not in {requests_path}")
        if original is not None:
            request, endpoint, params = original
        else:
            endpoint = "chat" if str(body.get("object", "")).startswith("chat") else "completions"
            # the request's k is unknown: keep up to the API's maximum
            request, params = TeacherRequest(problem_id, ""), SamplingParams(top_logprobs=20)
        try:
            completions = completions_from_body(body, endpoint, params)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TeacherError(f"{path}:{number}: malformed response body: {err!r}") from err
        if len(completions) < count:
            short.append((cid, len(completions), count))
        requests.setdefault(problem_id, request)
        slot = samples.setdefault(problem_id, {})
        for offset, completion in enumerate(completions[:count]):
            slot.setdefault(first + offset, completion)
    if failed:
        log.warning("%s: %d result lines failed and were skipped", path, failed)
    if short:
        cid, given, asked = short[0]
        log.warning(
            "%s: %d of %d result lines hold fewer choices than their custom_id asks for (%s: %d of %d): "
            "the server that wrote them ignores or caps `n`; export with --samples-per-line 1 "
            "(or teacher.max_n_per_call=1) to get every sample",
            path,
            len(short),
            lines,
            cid,
            given,
            asked,
        )
    for problem_id, slot in samples.items():
        yield TeacherResponse(requests[problem_id], [slot[i] for i in sorted(slot)])


class BatchFileTeacher(Teacher):
    """Replays an imported results file (config: conf/teacher/batch_file.yaml)."""

    answers_new_prompts = False

    def __init__(
        self,
        results: str | os.PathLike[str],
        requests: str | os.PathLike[str] | None = None,
        name: str = "batch",
    ) -> None:
        self.name = name
        self.responses = {r.request.problem_id: r for r in import_batch(results, requests)}

    def covers(self, problem_id: str) -> bool:
        return problem_id in self.responses

    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        for request in requests:
            stored = self.responses.get(request.problem_id)
            if stored is not None:
                yield TeacherResponse(request, stored.completions[: params.n])


def compose_export_config(
    teacher: str, prompt: str, dataset: str, overrides: Sequence[str] = (), data_dir: str | None = None
) -> Any:
    """The run config `mwp stage=distill teacher=... prompt=... dataset=...` would see.

    Composed by Hydra from the repo's conf/, so a teacher's `defaults` (conf/teacher/vllm.yaml
    extends openai.yaml) are inherited exactly as in a distill run; loading one YAML file by hand
    lost them and exported n=1 at temperature 0.
    """
    from hydra import compose, initialize_config_dir

    from mwp.config import register_resolvers
    from mwp.paths import REPO_ROOT

    register_resolvers()
    choices = [f"teacher={teacher}", f"prompt={prompt}", f"dataset={dataset}"]
    if data_dir is not None:
        choices.append(f"paths.data_dir={data_dir}")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*choices, *overrides])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mwp.teachers.batch",
        description="Export sampling requests as an OpenAI Batch API file.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write batch input JSONL for a dataset split")
    export.add_argument("--dataset", required=True, help="conf/dataset/<name>.yaml")
    export.add_argument("--split", default=None, help="default: the dataset's train_split")
    export.add_argument("--limit", type=int, default=None, help="default: dataset.limit")
    export.add_argument("--data-dir", default=None, help="default: paths.data_dir")
    export.add_argument("--prompt", default="cot_zeroshot", help="conf/prompt/<name>.yaml")
    export.add_argument("--teacher", default="openai", help="conf/teacher/<name>.yaml")
    export.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="teacher overrides, e.g. model=gpt-4o-mini n=8",
    )
    export.add_argument(
        "--samples-per-line", type=int, default=None, help="default: n, at most teacher.max_n_per_call"
    )
    export.add_argument("--out", required=True)
    export.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides, as for `mwp`: teacher.n=4 prompt.system=...",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from omegaconf import OmegaConf

    from mwp.config import ConfigError, check_teacher
    from mwp.config.hydra_errors import explain, is_composition_error
    from mwp.data.loaders import load_problems
    from mwp.teachers.factory import sampling_params
    from mwp.teachers.prompts import build_requests, prompt_stop

    overrides = [*(f"teacher.{kv}" for kv in args.set), *args.overrides]
    try:
        cfg = compose_export_config(args.teacher, args.prompt, args.dataset, overrides, args.data_dir)
        if OmegaConf.is_missing(cfg.teacher, "model") or cfg.teacher.get("model") is None:
            raise ConfigError(f"teacher.model is not set for teacher={args.teacher}: pass teacher.model=NAME")
        teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
        assert isinstance(teacher, dict)
        check_teacher(teacher)
        prompt = cfg.get("prompt")
        data_dir = str(cfg.paths.data_dir)
        split = args.split or str(cfg.dataset.train_split)
        limit = args.limit if args.limit is not None else cfg.dataset.get("limit")
        problems = load_problems(cfg.dataset.name, split, data_dir, limit=limit)
    except Exception as err:
        if is_composition_error(err):
            lines = explain(err, [f"teacher={args.teacher}", f"dataset={args.dataset}", *overrides])
        elif isinstance(err, ConfigError | DataError):
            lines = str(err).strip().splitlines()
        else:
            raise
        for line in lines:
            print(f"export: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    requests = build_requests(problems, prompt, data_dir=data_dir)
    params = sampling_params(teacher)
    params = replace(params, stop=tuple(dict.fromkeys([*params.stop, *prompt_stop(prompt)])))
    count = export_batch(
        requests,
        params,
        str(teacher["model"]),
        args.out,
        endpoint=str(teacher.get("endpoint", "chat")),
        samples_per_line=args.samples_per_line
        or min(params.n, int(teacher.get("max_n_per_call") or params.n)),
        max_tokens_param=str(teacher.get("max_tokens_param", "max_tokens")),
    )
    log.info("wrote %d batch lines for %d problems to %s", count, len(requests), args.out)


if __name__ == "__main__":
    main()
