"""Batch API files: export, execution by a real (loopback) server, import, and the batch_file teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mwp.paths import REPO_ROOT
from mwp.teachers.base import SamplingParams, TeacherError, TeacherRequest
from mwp.teachers.batch import BatchFileTeacher, export_batch, import_batch, parse_custom_id
from mwp.teachers.factory import build_teacher


def _requests() -> list[TeacherRequest]:
    return [TeacherRequest(f"multiarith/{i}", f"Question {i}?", system="Be brief.") for i in range(3)]


def _execute(input_path: Path, output_path: Path, base_url: str, fail: set[str] = frozenset()) -> None:
    """Run a batch input file against a server, writing the Batch API output format."""
    root = base_url.rsplit("/v1", 1)[0]
    with output_path.open("w") as out:
        for line in input_path.read_text().splitlines():
            row = json.loads(line)
            if row["custom_id"] in fail:
                result = {
                    "id": "r",
                    "custom_id": row["custom_id"],
                    "response": None,
                    "error": {"code": "server_error"},
                }
            else:
                request = urllib.request.Request(
                    root + row["url"],
                    data=json.dumps(row["body"]).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    body = json.loads(answer.read())
                result = {
                    "id": "r",
                    "custom_id": row["custom_id"],
                    "response": {"status_code": 200, "body": body},
                    "error": None,
                }
            out.write(json.dumps(result) + "\n")


def test_export_format(tmp_path):
    path = tmp_path / "in.jsonl"
    params = SamplingParams(n=5, temperature=0.7, max_tokens=64, top_logprobs=3, stop=("\n\nQ:",))
    assert export_batch(_requests(), params, "gpt-4o-mini", path, samples_per_line=2) == 9
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["method"] for r in rows} == {"POST"} and {r["url"] for r in rows} == {"/v1/chat/completions"}
    assert [r["custom_id"] for r in rows[:3]] == [
        "multiarith/0#s0-1",
        "multiarith/0#s2-3",
        "multiarith/0#s4-4",
    ]
    body = rows[0]["body"]
    assert body["model"] == "gpt-4o-mini" and body["n"] == 2 and body["max_tokens"] == 64
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question 0?"},
    ]
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["stop"] == ["\n\nQ:"]
    completions = tmp_path / "c.jsonl"
    export_batch(_requests(), params, "m", completions, endpoint="completions")
    row = json.loads(completions.read_text().splitlines()[0])
    assert row["url"] == "/v1/completions" and row["body"]["prompt"] == "Be brief.\n\nQuestion 0?"
    with pytest.raises(ValueError, match="occurs twice"):
        export_batch(_requests() * 2, params, "m", tmp_path / "dup.jsonl")


def test_custom_ids_survive_odd_problem_ids():
    assert parse_custom_id("svamp/chal-1#s#s3-7") == ("svamp/chal-1#s", 3, 5)
    with pytest.raises(ValueError, match="custom_id"):
        parse_custom_id("no-samples-here")


def test_round_trip_through_a_server(fault_server, tmp_path):
    server = fault_server()
    input_path, output_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    params = SamplingParams(n=4, top_logprobs=2)
    export_batch(_requests(), params, "echo", input_path, samples_per_line=3)
    _execute(input_path, output_path, server.base_url, fail={"multiarith/2#s3-3"})
    responses = {r.request.problem_id: r for r in import_batch(output_path, input_path)}
    assert sorted(responses) == ["multiarith/0", "multiarith/1", "multiarith/2"]
    assert [len(responses[f"multiarith/{i}"].completions) for i in range(3)] == [4, 4, 3]
    first = responses["multiarith/0"]
    assert first.request.prompt == "Question 0?" and first.request.system == "Be brief."
    # sample indices 0-2 came from one call, 3 from the next, in that order
    assert [c.text.split(" sample ")[1].split(" ")[0] for c in first.completions] == ["0", "1", "2", "0"]
    assert all(c.logprobs is not None and len(c.logprobs.top_tokens[0]) == 2 for c in first.completions)
    assert {c.text for r in responses.values() for c in r.completions} <= set(server.served_texts)

    teacher = build_teacher(
        {
            "_target_": "mwp.teachers.batch.BatchFileTeacher",
            "results": str(output_path),
            "requests": str(input_path),
        }
    )
    assert isinstance(teacher, BatchFileTeacher)
    assert teacher.covers("multiarith/1") and not teacher.covers("multiarith/9")
    asked = [TeacherRequest("multiarith/1", "Question 1?"), TeacherRequest("multiarith/9", "?")]
    replayed = list(teacher.generate(asked, SamplingParams(n=2)))
    assert [r.request.problem_id for r in replayed] == ["multiarith/1"]
    assert [c.text for c in replayed[0].completions] == [
        c.text for c in responses["multiarith/1"].completions[:2]
    ]


def test_malformed_results_name_file_and_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(
        '{"custom_id": "p#s0-0", "response": {"status_code": 200, "body": {"choices": []}}}\n{oops\n'
    )
    with pytest.raises(TeacherError, match=r"out\.jsonl:2"):
        list(import_batch(path))


def _export(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "mwp.teachers.batch", "export", "--dataset", "multiarith", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_export_command_composes_the_teacher_config_with_its_defaults(tmp_path: Path, data_dir: Path) -> None:
    """conf/teacher/vllm.yaml inherits n, temperature, max_tokens, ... from openai.yaml (`defaults`)."""
    out = tmp_path / "batch.jsonl"
    result = _export(
        tmp_path,
        "--teacher=vllm",
        "--prompt=cot_fewshot",
        "--limit=3",
        f"--data-dir={data_dir}",
        f"--out={out}",
        "--samples-per-line=4",
        "teacher.model=qwen",
        "teacher.max_tokens=200",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines[:2]] == ["multiarith/0#s0-3", "multiarith/0#s4-7"]
    assert len(lines) == 6  # 3 problems x n=8 in chunks of 4
    body = lines[0]["body"]
    # n, temperature, top_p from openai.yaml; top_logprobs from vllm.yaml; max_tokens from the command line
    assert (body["model"], body["n"], body["temperature"], body["top_p"]) == ("qwen", 4, 0.7, 1.0)
    assert body["max_tokens"] == 200 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["messages"][-1]["content"].count("Question:") > 1  # the few-shot prompt, with exemplars
    assert "\n\nQuestion:" in body["stop"]  # the prompt's own stop sequences join the teacher's


def test_export_command_names_an_unknown_teacher(tmp_path: Path) -> None:
    result = _export(tmp_path, "--teacher=nope", f"--out={tmp_path / 'x.jsonl'}")
    assert result.returncode == 2 and result.stderr.startswith("export: error: teacher=nope: no such option")
    assert not (tmp_path / "x.jsonl").exists()


def test_results_of_a_server_that_ignores_n_are_imported_short_and_said_so(
    fault_server, tmp_path, caplog, monkeypatch
):
    """A line asking for 4 samples of a server that gives one: the import says so, and so does distill."""
    import logging

    from mwp.data.loaders import load_problems
    from mwp.distill.rationales import distill

    server = fault_server(max_n=1)
    problems = load_problems("multiarith", "train", limit=3)
    requests = [TeacherRequest(p.id, p.question) for p in problems]
    input_path, output_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    export_batch(requests, SamplingParams(n=4), "echo", input_path)
    _execute(input_path, output_path, server.base_url)
    caplog.set_level(logging.INFO)
    responses = list(import_batch(output_path, input_path))
    assert [len(r.completions) for r in responses] == [1, 1, 1]
    (warning,) = [r.message for r in caplog.records if "fewer choices" in r.message]
    assert "3 of 3 result lines" in warning and "multiarith/0#s0-3: 1 of 4" in warning
    assert "--samples-per-line 1" in warning

    monkeypatch.setenv("MWP_PROGRESS", "log")
    teacher = BatchFileTeacher(output_path, input_path)
    stats = distill(
        problems,
        teacher,
        requests,
        SamplingParams(n=4),
        tmp_path / "distill",
        dataset="multiarith",
        split="train",
    )
    assert (stats.samples_requested, stats.samples_seen) == (12, 3)
    written = json.loads((tmp_path / "distill" / "stats.json").read_text())
    assert (written["samples_requested"], written["samples_seen"]) == (12, 3)
    assert any("received 3/12 requested" in r.message for r in caplog.records if r.name == "mwp.progress")
    assert any("gave 3 of the 12 samples requested" in r.message for r in caplog.records)
    # the echo answers are all wrong: nothing kept is said with the figures
    assert any("kept 0 of 3 samples received (12 requested" in r.message for r in caplog.records)


def test_export_asks_no_more_per_line_than_the_teacher_config_allows(tmp_path: Path, data_dir: Path) -> None:
    """teacher=llamacpp sets max_n_per_call=1 (its server ignores n): one sample per batch line."""
    out = tmp_path / "batch.jsonl"
    result = _export(
        tmp_path,
        "--teacher=llamacpp",
        "--limit=2",
        f"--data-dir={data_dir}",
        f"--out={out}",
        "teacher.model=smollm2",
        "teacher.n=3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines[:3]] == [
        "multiarith/0#s0-0",
        "multiarith/0#s1-1",
        "multiarith/0#s2-2",
    ]
    assert len(lines) == 6 and {line["body"]["n"] for line in lines} == {1}
