"""Prompt building on the real datasets: complexity-based exemplars, zero-shot CoT, equation prompts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mwp.config.schema.prompt import PromptConfig, prompt_config
from mwp.data.loaders import load_problems
from mwp.paths import REPO_ROOT
from mwp.teachers.prompts import build_requests, clean_equation, complexity, rank_exemplars
from mwp.verify.equations import solve_equation

PROMPT_DIR = REPO_ROOT / "conf" / "prompt"


@pytest.fixture(scope="module")
def gsm8k_train(data_dir: Path):
    return load_problems("gsm8k", "train", data_dir)


@pytest.fixture(scope="module")
def multiarith_train(data_dir: Path):
    return load_problems("multiarith", "train", data_dir)


def _steps(solution: str) -> int:
    # independent count: lines before the "#### answer" line
    return len([line for line in solution.split("\n") if line.strip()]) - 1


def test_fewshot_cot_uses_the_most_complex_exemplars(gsm8k_train, multiarith_train):
    cfg = {"style": "cot", "num_exemplars": 4, "exemplar_dataset": "gsm8k"}
    requests = build_requests(multiarith_train[:3], cfg, exemplar_pool=gsm8k_train)
    most = max(_steps(p.solution) for p in gsm8k_train)
    top = sorted(gsm8k_train, key=lambda p: (-_steps(p.solution), p.id))[:4]
    assert _steps(top[0].solution) == most
    for problem, request in zip(multiarith_train[:3], requests, strict=True):
        assert request.problem_id == problem.id
        prompt = request.prompt
        assert prompt.count("Question: ") == 5
        assert prompt.endswith(f"Question: {problem.question.strip()}\nLet's think step by step")
        for exemplar in top:
            assert exemplar.question.strip() in prompt
        assert "<<" not in prompt and "####" not in prompt
        assert prompt.count("The answer is ") == 4


def test_the_asked_problem_is_never_its_own_exemplar(gsm8k_train):
    cfg = PromptConfig(style="cot", num_exemplars=3, exemplar_dataset="gsm8k")
    ranked = rank_exemplars(gsm8k_train, cfg)
    asked = ranked[:2]  # the two most complex training problems themselves
    requests = build_requests(asked, cfg, exemplar_pool=gsm8k_train)
    for problem, request in zip(asked, requests, strict=True):
        body = request.prompt.rsplit("Question: ", 1)[0]
        assert problem.question.strip() not in body
        assert body.count("Question: ") == 3
        assert complexity(ranked[3]) <= complexity(problem)


def test_zero_shot_cot():
    from mwp.data.problem import Problem

    problem = Problem(
        id="q1", question="Tom has 3 apples and buys 4 more. How many?", answer=None, answer_text="7"
    )
    (request,) = build_requests([problem], {"style": "cot", "num_exemplars": 0, "system": "You are a tutor."})
    assert "Let's think step by step" in request.prompt
    assert "Question: Tom has 3 apples" in request.prompt
    assert request.system == "You are a tutor."
    assert build_requests([problem], None)[0].prompt == request.prompt


def test_equation_prompts_en_and_zh(data_dir, multiarith_train):
    math23k = load_problems("math23k", "train", data_dir, limit=2000)
    zh = build_requests(math23k[:2], OmegaConf.load(PROMPT_DIR / "equation_zh.yaml"), exemplar_pool=math23k)
    assert zh[0].prompt.startswith("请为下面的数学应用题")
    assert zh[0].prompt.endswith(f"题目：{math23k[0].question.strip()}\n方程：")
    assert zh[0].prompt.count("方程：x=") == 4
    en = build_requests(
        multiarith_train[:1], OmegaConf.load(PROMPT_DIR / "equation_en.yaml"), exemplar_pool=multiarith_train
    )
    assert en[0].prompt.count("Equation: x=") == 4
    # the exemplar equations still solve to their problems' answers
    for problem in rank_exemplars(
        multiarith_train, prompt_config(OmegaConf.load(PROMPT_DIR / "equation_en.yaml"))
    )[:4]:
        assert solve_equation(clean_equation(problem.equation)) == problem.answer


def test_every_prompt_config_loads():
    names = sorted(p.stem for p in PROMPT_DIR.glob("*.yaml"))
    assert {"cot_fewshot", "cot_zeroshot", "equation_en", "equation_zh"} <= set(names)
    for name in names:
        prompt_config(OmegaConf.load(PROMPT_DIR / f"{name}.yaml"))


def test_bad_prompt_config_is_named():
    with pytest.raises(
        ValueError, match=r"^prompt\.style: Input should be 'cot', 'equation' or 'equation_chain'"
    ):
        prompt_config({"style": "poem"})
    with pytest.raises(ValueError, match=r"^prompt\.num_exemplar: unknown key"):
        prompt_config({"style": "cot", "num_exemplar": 3})
    with pytest.raises(ValueError, match=r"prompt\.exemplar_dataset is required"):
        prompt_config({"num_exemplars": 2})


# sha256 of the prompt the authors printed for GSM8K train #0 (FranxYao/FlanT5-CoT-Specialization,
# notebooks/test_codex.ipynb@3238aab, cell 8c074f23: prompt_complex.txt + "\nQuestion: " + question +
# "\nLet's think step by step"; print's final newline left out): 8,654 characters
FU2023_PROMPT_FOR_TRAIN_0 = ("b95ee758087c062e2af65bcc6c0d3102f0c812d19ed136b758f56dac536b8a3f", 8654)


def test_fu2023_prompt_is_their_complex_prompt_rebuilt_from_gsm8k(gsm8k_train):
    cfg = OmegaConf.load(PROMPT_DIR / "fu2023_complex.yaml")
    (request,) = build_requests([gsm8k_train[0]], cfg, exemplar_pool=gsm8k_train)
    digest = hashlib.sha256(request.prompt.encode()).hexdigest()
    assert (digest, len(request.prompt)) == FU2023_PROMPT_FOR_TRAIN_0
    assert request.prompt.count("Question: ") == 9 and request.prompt.endswith("\nLet's think step by step")


def test_a_problem_of_the_fixed_prompt_is_asked_with_the_other_seven(gsm8k_train):
    cfg = prompt_config(OmegaConf.load(PROMPT_DIR / "fu2023_complex.yaml"))
    by_id = {p.id: p for p in gsm8k_train}
    for exemplar_id in cfg.exemplar_ids:
        asked = by_id[exemplar_id]
        (request,) = build_requests([asked], cfg, exemplar_pool=gsm8k_train)
        shots = request.prompt.split("\n\n")[:-1]
        assert len(shots) == 7
        assert all(f"Question: {asked.question}\n" not in shot for shot in shots)
        assert request.prompt.endswith(f"Question: {asked.question}\nLet's think step by step")


def test_a_fixed_prompt_names_its_exemplars(gsm8k_train):
    fixed = {"style": "cot", "num_exemplars": 2, "exemplar_dataset": "gsm8k", "selection": "fixed"}
    with pytest.raises(ValueError, match=r"prompt\.selection=fixed needs prompt\.exemplar_ids"):
        prompt_config({**fixed, "exemplar_ids": ["gsm8k/train/1"]})
    with pytest.raises(ValueError, match=r"prompt\.exemplar_ids is read with prompt\.selection=fixed only"):
        prompt_config({**fixed, "selection": "first", "exemplar_ids": ["gsm8k/train/1", "gsm8k/train/2"]})
    with pytest.raises(ValueError, match=r"\['gsm8k/train/99999'\] are not usable problems of gsm8k/train"):
        build_requests(
            gsm8k_train[:1],
            {**fixed, "exemplar_ids": ["gsm8k/train/1", "gsm8k/train/99999"]},
            exemplar_pool=gsm8k_train,
        )

    exemplar = {"question": "Q", "equation": "x=3*4", "answer": "12"}
    with pytest.raises(
        ValueError, match=r"^prompt\.exemplars\.0: equation='x=3\*4' gives 12, not the answer 13"
    ):
        prompt_config({"num_exemplars": 1, "exemplars": [{**exemplar, "answer": 13}]})
    with pytest.raises(ValueError, match=r"prompt\.num_exemplars=2 but prompt\.exemplars has only 1"):
        prompt_config({"num_exemplars": 2, "exemplars": [exemplar]})
    with pytest.raises(ValueError, match=r"not both"):
        prompt_config({"num_exemplars": 1, "exemplars": [exemplar], "exemplar_dataset": "gsm8k"})


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_chain_prompts_show_their_fixed_exemplar_set_and_no_dataset_problem(language: str) -> None:
    from mwp.teachers.prompts import fixed_exemplars

    cfg = prompt_config(OmegaConf.load(PROMPT_DIR / f"fltt_{language}.yaml"))
    assert cfg.exemplars is not None and cfg.exemplar_dataset is None
    dataset = "math23k" if language == "zh" else "multiarith"
    asked = load_problems(dataset, "train", limit=3)
    # no pool is loaded: the exemplars are the config's, in its order, the same for every problem
    requests = build_requests(asked, cfg, data_dir="/nonexistent")
    shown = fixed_exemplars(cfg)
    assert [p.equation for p in shown] == [e.equation for e in cfg.exemplars]
    for problem, request in zip(asked, requests, strict=True):
        body = request.prompt.split(problem.question.strip())[0]
        assert all(e.question in body and e.equation in body for e in cfg.exemplars)
    # written for mwp: no exemplar is, or has the equation of, a problem of the datasets it is used on
    sets = {"zh": [("math23k", s) for s in ("train", "valid", "test")]}.get(
        language, [("multiarith", "train"), ("multiarith", "test"), ("svamp", "train"), ("svamp", "test")]
    )
    gold = {
        clean_equation(p.equation) for name, split in sets for p in load_problems(name, split) if p.equation
    }
    questions = {p.question.strip() for name, split in sets for p in load_problems(name, split)}
    assert len(gold) > 1000
    assert not {clean_equation(e.equation) for e in cfg.exemplars} & gold
    assert not {e.question for e in cfg.exemplars} & questions
