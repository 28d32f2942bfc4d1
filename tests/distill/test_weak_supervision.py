"""A weak-supervision audit of From Large to Tiny's pipeline: only final answers are known.

In a weakly supervised run (`experiment=fltt_weak12k`, and the fltt chain in general) no gold equation
of a training or evaluation problem may reach a teacher prompt, a training target or a filter. The
audit runs the real chain, refinement and (slow) the whole pipeline on real Math23K and Weak12K
problems with a teacher that records every request it receives and answers from a problem's question
and final answer only (an enumeration over the question's numbers: a stand-in for a capable teacher),
and checks:

- prompts: no prompt holds the gold equation of any Math23K problem (train, valid or test; Weak12K has
  none) outside the teacher's own text it is asked to mask or repair. Few-shot exemplars come from the
  prompt's fixed exemplar set (`prompt.exemplars` in conf/prompt/fltt_*.yaml, written for mwp); the
  check catches the leak a dataset-drawn exemplar pool would be;
- targets and filters: run twice, on the problems as loaded and on the same problems with every gold
  equation removed, the requests, the kept rows (their templates and texts), the refined rows, the
  step statistics and the trained student's evaluation are identical. What reads a gold equation could
  not be, so nothing that chooses, checks or trains does.

Gold equations are read only to MEASURE: semantic precision (`refine/stats.json`, `refine.precision`:
the share of kept templates equivalent to the gold one) changes between the two runs and nothing else.
The simulated teacher answers from gold equations by design; it is a simulation, named as one, and not
the teacher of a weak run (`fltt_weak12k` needs a live one).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from omegaconf import open_dict

from mwp.data.artifact import ARTIFACT, read_distilled
from mwp.data.gold_templates import gold_template
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.distill.equation_chain import ChainSettings, distill_chain
from mwp.refinement.enumeration import EnumerationMethod
from mwp.refinement.middle_model import MiddleModelSearch
from mwp.refinement.rounds import REFINED, STATS, refine
from mwp.refinement.teacher_feedback import TeacherFeedback
from mwp.refinement.template_search import enumerate_equations
from mwp.teachers.base import Completion, SamplingParams, Teacher, TeacherRequest, TeacherResponse
from mwp.teachers.completion_cache import stable_seed
from mwp.teachers.prompts import build_requests, clean_equation
from mwp.verify.masking import mask_question
from tests.helpers import compose_config, typed_config

TEACHER = f"{__name__}.RecordingTeacher"
_EQUATION = re.compile(r"[xX]\s*=\s*[^\s，。；;,\n]+")
_NAME = re.compile(r"N(\d+)")
_OPERATOR = re.compile(r"[-+*/^%]")


def stripped(problem: Problem) -> Problem:
    """The problem as weak supervision knows it: question, numbers and final answer, no equation."""
    return replace(problem, equation=None, solution=None)


class RecordingTeacher(Teacher):
    """Records every request; answers from the question's numbers and the final answer only.

    Step (a) writes an equation over the problem's numbers that reaches the answer (the enumeration's
    k-th hit for sample k), a quarter of them with an unclosed "(" and a quarter of the masked ones
    too, so that both format corrections are asked; a repair closes the parenthesis.
    """

    name = "recording-oracle"
    log: ClassVar[list[TeacherRequest]] = []

    def __init__(
        self,
        problems: Sequence[Problem] | None = None,
        *,
        name: str = "recording-oracle",
        dataset: str | None = None,
        splits: Sequence[str] = ("train",),
        data_dir: str | None = None,
    ) -> None:
        self.name = name
        if problems is None:
            assert dataset is not None
            problems = [p for split in splits for p in load_problems(dataset, split, data_dir)]
        self._problems = {p.id: stripped(p) for p in problems}
        self._templates: dict[tuple[str, str], str] = {}

    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        for request in requests:
            self.log.append(request)
            problem = self._problems[request.problem_id]
            texts = [self._answer(request, problem, index) for index in range(params.n)]
            yield TeacherResponse(request, [Completion(text) for text in texts])

    def _hits(self, problem: Problem) -> list[str]:
        if problem.answer is None:
            return []
        values = mask_question(problem.question, problem.language).values
        return enumerate_equations(values, problem.answer, max_ops=2, max_results=4, time_limit_s=2.0)

    def _answer(self, request: TeacherRequest, problem: Problem, index: int) -> str:
        slip = stable_seed(problem.id, request.task) % 4 == 0
        subject = request.subject or ""
        if request.task in ("format_correction", "masked_format_correction"):
            repaired = subject + ")"
            if (problem.id, subject) in self._templates:
                self._templates[problem.id, repaired] = self._templates[problem.id, subject]
            return repaired
        if request.task == "masked_equation":
            template = self._templates.get((problem.id, subject))
            if template is None:
                return "I cannot rewrite this equation."
            return f"x=({template}" if slip else f"x={template}"
        hits = self._hits(problem)
        if not hits:
            return "I cannot solve this problem."
        template = hits[index % len(hits)]
        numbers = mask_question(problem.question, problem.language).numbers
        equation = "x=" + _NAME.sub(lambda m: numbers[int(m.group(1))], template)
        if slip and request.task == "equation":
            equation = equation.replace("x=", "x=(", 1)
        self._templates[problem.id, equation] = template
        return equation


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[None]:
    RecordingTeacher.log.clear()
    yield
    RecordingTeacher.log.clear()


def normalised(text: str) -> str:
    """Text as the leak search compares it: NFKC (full-width digits and signs), no whitespace, ASCII
    operators, a lower-case unknown."""
    text = unicodedata.normalize("NFKC", text).replace("×", "*").replace("÷", "/").replace("X", "x")
    return re.sub(r"\s+", "", text)


@dataclass
class GoldEquations:
    """Every Math23K gold equation (train, valid and test), in the forms a leak could take.

    `spelled`: each as a prompt would write it ("x=(11-1)*2"), for an equation of ANY problem that a
    text shows (an exemplar drawn from the dataset). `own(problem)`: the problem's own gold equation as
    an expression ("(11-1)*2") and as a template over its masked numbers ("(N0-1)*N1"), for a text
    about that problem; a form that the problem's question (or masked question) itself contains is
    no leak and is left out ("3/4" in a question that says 3/4).
    """

    problems: dict[str, Problem]
    spelled: set[str]

    def own(self, problem_id: str) -> list[str]:
        problem = self.problems.get(problem_id)
        if problem is None or not problem.equation:
            return []
        expression = normalised(clean_equation(problem.equation)).removeprefix("x=")
        forms = [expression, normalised(gold_template(problem) or "")]
        question = normalised(problem.question)
        masked = normalised(mask_question(problem.question, problem.language).text)
        return [
            form
            for form in dict.fromkeys(forms)
            if _OPERATOR.search(form) and form not in question and form not in masked
        ]

    def in_text(self, problem_id: str, text: str) -> list[str]:
        """The gold equations `text` (about `problem_id`) holds: any problem's spelled out, its own in
        any form."""
        flat = normalised(text)
        found = [m.group(0) for m in _EQUATION.finditer(text) if self._spelled(m.group(0))]
        return found + [form for form in self.own(problem_id) if form in flat]

    def _spelled(self, equation: str) -> bool:
        return any(
            normalised(clean_equation(candidate)) in self.spelled
            for candidate in (equation, equation.rstrip(".)）"))
        )


@pytest.fixture(scope="module")
def math23k_gold() -> GoldEquations:
    problems = {p.id: p for split in ("train", "valid", "test") for p in load_problems("math23k", split)}
    spelled = {normalised(clean_equation(p.equation)) for p in problems.values() if p.equation}
    return GoldEquations(problems, spelled)


def leaked(requests: Sequence[TeacherRequest], gold: GoldEquations) -> list[tuple[str, str]]:
    """(problem id, equation) for every gold equation a prompt holds outside the teacher's own text
    (the equation it is asked to mask or repair, `subject`)."""
    found = []
    for request in requests:
        text = request.prompt.replace(request.subject, "") if request.subject else request.prompt
        found += [(request.problem_id, equation) for equation in gold.in_text(request.problem_id, text)]
    return found


def row_view(path: Path) -> list[dict[str, Any]]:
    """The rows as training reads them, the problem record's own gold equation field left out."""
    out = []
    for row in read_distilled(path):
        data = row.to_json()
        data["problem"] = {k: v for k, v in data["problem"].items() if k not in ("equation", "solution")}
        out.append(data)
    return out


def run_chain(problems: Sequence[Problem], prompt: Any, out: Path) -> tuple[dict, list[TeacherRequest]]:
    RecordingTeacher.log.clear()
    teacher = RecordingTeacher(problems)
    requests = build_requests(problems, prompt)
    stats = distill_chain(
        problems,
        teacher,
        requests,
        SamplingParams(n=2),
        out,
        dataset=problems[0].source,
        split="train",
        prompt_cfg=prompt,
        settings=ChainSettings(max_corrections=2),
    )
    return stats, list(RecordingTeacher.log)


@pytest.mark.parametrize(("dataset", "split"), [("math23k", "train"), ("weak12k", "valid")])
def test_no_gold_equation_reaches_a_prompt_a_target_or_a_filter_of_the_chain(
    dataset: str, split: str, math23k_gold: GoldEquations, tmp_path: Path
) -> None:
    problems = load_problems(dataset, split, limit=60)
    prompt = compose_config(["prompt=fltt_zh"]).prompt
    with_gold, asked = run_chain(problems, prompt, tmp_path / "gold")
    without_gold, asked_blind = run_chain([stripped(p) for p in problems], prompt, tmp_path / "blind")

    # every step was asked, both corrections included, and something was kept
    steps = with_gold["steps"]
    assert {r.task for r in asked} == {
        "equation",
        "format_correction",
        "masked_equation",
        "masked_format_correction",
    }
    assert steps["format_correction"]["passed"] > 0 and steps["masked_format_correction"]["passed"] > 0
    assert with_gold["problems_kept"] >= 20
    # no prompt shows the teacher a Math23K gold equation, in any spelling: the exemplars are the
    # fixed set, and no problem is shown its own
    assert len(math23k_gold.spelled) > 20_000
    assert leaked(asked, math23k_gold) == []
    exemplars = [e.equation for e in prompt.exemplars]
    assert all(e in r.prompt for r in asked if r.task == "equation" for e in exemplars)
    # and a gold equation changes nothing: the prompts, the kept rows, the statistics
    assert [(r.problem_id, r.task, r.prompt, r.subject) for r in asked] == [
        (r.problem_id, r.task, r.prompt, r.subject) for r in asked_blind
    ]
    assert row_view(tmp_path / "gold" / ARTIFACT) == row_view(tmp_path / "blind" / ARTIFACT)
    assert with_gold == without_gold


def test_the_audit_catches_exemplars_drawn_from_the_training_split(math23k_gold: GoldEquations) -> None:
    """The leak the fixed exemplar set closes: Math23K training problems as exemplars put their gold
    equations into every prompt, and the prompt check above finds them."""
    drawn = compose_config(["prompt=fltt_zh", "prompt.exemplars=null", "prompt.exemplar_dataset=math23k"])
    problems = load_problems("math23k", "train", limit=5)
    requests = build_requests(problems, drawn.prompt)
    found = leaked(requests, math23k_gold)
    assert len(found) >= 4 * len(problems)


def test_the_audit_finds_a_problems_own_gold_equation_in_any_spelling(math23k_gold: GoldEquations) -> None:
    """A prompt that shows a problem its own gold equation, as a template over N0..Nk or as numbers in
    other spacing and full-width signs, is caught; the plain question is not."""
    problems = load_problems("math23k", "train", limit=40)
    caught = 0
    for problem in problems:
        assert leaked([TeacherRequest(problem.id, f"题目：{problem.question}\n方程：")], math23k_gold) == []
        forms = math23k_gold.own(problem.id)
        if not forms:
            continue
        template = gold_template(problem)
        expression = clean_equation(problem.equation or "").removeprefix("x=")
        spaced = " ".join(expression).replace("*", "×").replace("(", "（").replace(")", "）")
        for hint in (template, spaced):
            assert leaked(
                [TeacherRequest(problem.id, f"题目：{problem.question}\n提示：{hint}")], math23k_gold
            )
        caught += 1
    assert caught >= 30


def refine_twice(method_for: Any, failed: Sequence[Problem], kept: list, out: Path) -> list[dict]:
    views = []
    for name, problems, rows in (
        ("gold", failed, kept),
        ("blind", [stripped(p) for p in failed], [replace(r, problem=stripped(r.problem)) for r in kept]),
    ):
        RecordingTeacher.log.clear()
        refine(method_for(out / name), rows, problems, {}, out / name, precision=True)
        stats = json.loads((out / name / STATS).read_text())
        views.append(
            {"rows": row_view(out / name / REFINED), "stats": stats, "asked": list(RecordingTeacher.log)}
        )
    return views


_TIMES = ("wall_s", "train_s", "search_s", "candidates_per_s", "started")


def _without(stats: dict, keys: Sequence[str]) -> Any:
    if isinstance(stats, dict):
        return {k: _without(v, keys) for k, v in stats.items() if k not in keys}
    if isinstance(stats, list):
        return [_without(v, keys) for v in stats]
    return stats


@pytest.mark.parametrize(
    "method",
    # the middle model trains and decodes twice (~30 s of CPU): slow
    ["enumeration", "teacher_feedback", pytest.param("middle_model", marks=pytest.mark.slow)],
)
def test_refinement_reads_gold_equations_only_to_measure_precision(
    method: str, math23k_gold: GoldEquations, tmp_path: Path
) -> None:
    problems = load_problems("math23k", "train", limit=60)
    run_chain(problems, compose_config(["prompt=fltt_zh"]).prompt, tmp_path / "distill")
    kept = read_distilled(tmp_path / "distill" / ARTIFACT)
    failed = [p for p in problems if p.id not in {r.id for r in kept}][:12]
    assert len(kept) >= 20 and failed
    constants = ("1", "2", "100")

    def method_for(out: Path) -> Any:
        if method == "enumeration":
            return EnumerationMethod(
                constants=constants, max_ops=2, max_results=4, processes=1, time_limit_s=2.0
            )
        if method == "teacher_feedback":
            teacher = RecordingTeacher(problems)
            return TeacherFeedback(teacher, SamplingParams(n=1), max_retries=2, constants=constants)
        config = typed_config(
            [
                "experiment=fltt_math23k",
                "student@refine.middle_model.student=tiny_causal",
                "refine.middle_model.max_steps=6",
                "refine.middle_model.batch_size=8",
                "refine.middle_model.num_beams=2",
                "refine.middle_model.num_return_sequences=2",
                "refine.middle_model.max_new_tokens=10",
                "trainer.enable_progress_bar=false",
            ],
            run_dir=out,
        )
        assert config.refine.middle_model is not None
        return MiddleModelSearch(config, config.refine.middle_model, out, max_rounds=1, constants=constants)

    gold, blind = refine_twice(method_for, failed, kept, tmp_path)
    assert gold["rows"] == blind["rows"]
    assert _without(gold["stats"], (*_TIMES, "precision")) == _without(blind["stats"], (*_TIMES, "precision"))
    if method == "teacher_feedback":
        assert gold["asked"] and [r.prompt for r in gold["asked"]] == [r.prompt for r in blind["asked"]]
        assert leaked(gold["asked"], math23k_gold) == []
    # precision is the one figure that reads the gold equations: it measures the kept rows
    assert gold["stats"]["distill"]["precision"]["with_gold"] == len(kept)
    assert blind["stats"]["distill"]["precision"]["with_gold"] == 0


@pytest.mark.slow
def test_a_weakly_supervised_fltt_run_end_to_end(
    math23k_gold: GoldEquations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """experiment=fltt_math23k with the recording teacher (distill -> teacher feedback -> train ->
    evaluate), then again with every loader dropping the gold equations: the same outputs.

    Recorded on the way: every teacher prompt, every training example the student's data module
    builds (sources and targets; the middle model's too where it runs) and every evaluation source.
    Prompts and sources are searched for gold equations in any spelling; targets are compared between
    the two runs instead (a correct target IS the gold template, so a search cannot tell a leak from
    a right answer; a target read from a gold equation would differ in the run without them).
    """
    import mwp.data.loaders
    import mwp.evaluation.scoring
    import mwp.evaluation.suite
    import mwp.stages.distill
    import mwp.stages.refine
    import mwp.student.datamodule
    from mwp.pipeline import run

    examples: list[tuple[str, str, str, str]] = []
    eval_sources: list[tuple[str, str]] = []
    build_items = mwp.student.datamodule.build_train_items
    build_source = mwp.evaluation.scoring.build_source_kept

    def recorded_items(*args: Any, **kwargs: Any) -> Any:
        items = build_items(*args, **kwargs)
        examples.extend(
            (i.example.problem_id, i.example.format, i.example.source, i.example.target) for i in items
        )
        return items

    def recorded_source(problem: Problem, *args: Any, **kwargs: Any) -> Any:
        source, shown = build_source(problem, *args, **kwargs)
        eval_sources.append((problem.id, source))
        return source, shown

    monkeypatch.setattr(mwp.student.datamodule, "build_train_items", recorded_items)
    monkeypatch.setattr(mwp.evaluation.scoring, "build_source_kept", recorded_source)

    def outputs(name: str) -> dict[str, Any]:
        RecordingTeacher.log.clear()
        examples.clear()
        eval_sources.clear()
        cfg = compose_config(
            [
                "experiment=fltt_math23k",
                "debug=default",
                "dataset.limit=40",
                "refine=teacher_feedback",
                "trainer.max_steps=2",
                f"cache.dir={tmp_path / name / 'cache'}",
            ],
            run_dir=tmp_path / name,
        )
        with open_dict(cfg):
            cfg.teacher = {"_target_": TEACHER, "name": "recording-oracle", "dataset": "math23k", "n": 2}
        run(cfg)
        root = tmp_path / name
        results = json.loads((root / "eval" / "results.json").read_text())
        return {
            "asked": [(r.problem_id, r.task, r.prompt, r.subject) for r in RecordingTeacher.log],
            "examples": sorted(examples),
            "eval_sources": sorted(eval_sources),
            "distilled": row_view(root / "distill" / ARTIFACT),
            "refined": row_view(root / "refine" / REFINED),
            "train": json.loads((root / "student" / "train_stats.json").read_text()),
            "results": [_without(r, ("wall_s", "samples_per_s", "seconds")) for r in results],
            "predictions": sorted(p.read_text() for p in (root / "eval").glob("predictions_*.jsonl")),
        }

    gold = outputs("gold")
    tasks = {task for _, task, _, _ in gold["asked"]}
    assert {"equation", "masked_equation", "feedback"} <= tasks
    asked = [TeacherRequest(pid, prompt, subject=subject) for pid, _, prompt, subject in gold["asked"]]
    assert leaked(asked, math23k_gold) == []
    assert gold["examples"] and {fmt for _, fmt, _, _ in gold["examples"]} == {"equation"}
    assert {pid.split("/")[0] for pid, _ in gold["eval_sources"]} == {"math23k", "weak12k"}
    sources = [(pid, text) for pid, _, text, _ in gold["examples"]] + gold["eval_sources"]
    assert [
        (pid, math23k_gold.in_text(pid, text)) for pid, text in sources if math23k_gold.in_text(pid, text)
    ] == []

    original = mwp.data.loaders.load_problems

    def without_gold(*args: Any, **kwargs: Any) -> list[Problem]:
        return [stripped(p) for p in original(*args, **kwargs)]

    for module in (mwp.data.loaders, mwp.stages.distill, mwp.stages.refine, mwp.evaluation.suite):
        monkeypatch.setattr(module, "load_problems", without_gold)
    blind = outputs("blind")
    assert gold == blind
