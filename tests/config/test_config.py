from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mwp.config import ConfigError
from mwp.stages import load_config
from tests.helpers import CONF_DIR, compose_config
from tests.test_sweeps import has_module


def test_default_config_composes_and_resolves(tmp_path: Path) -> None:
    cfg = compose_config(run_dir=tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.stage.steps == ["distill", "train", "evaluate"]
    assert Path(cfg.paths.data_dir, "svamp", "SVAMP.json").exists()
    assert Path(cfg.student.fallback_config, "tokenizer.json").exists()
    assert cfg.teacher._target_ == "mwp.teachers.recorded.RecordedTeacher"
    load_config(cfg)


def test_demo_experiment_overrides_only_what_differs(tmp_path: Path) -> None:
    base = compose_config(run_dir=tmp_path)
    demo = compose_config(["experiment=demo"], run_dir=tmp_path)
    assert demo.task_name == "demo"
    assert demo.evaluation.limit != base.evaluation.limit
    assert demo.student.fallback_config == base.student.fallback_config
    assert demo.dataset.name == "svamp"


def test_make_demo_runs_a_pretrained_student_before_and_after_beside_the_equation_route(
    tmp_path: Path,
) -> None:
    recipe = (CONF_DIR.parent / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    experiments = sorted(set(re.findall(r"\bexperiment=(\w+)", recipe)))
    assert experiments == ["demo_equation", "demo_smollm2"]
    for name in experiments:
        load_config(compose_config([f"experiment={name}"], run_dir=tmp_path))
    cot = compose_config(["experiment=demo_smollm2"], run_dir=tmp_path)
    # a real pretrained model (not a random init), scored as built and after training on the same problems
    assert cot.student.kind == "causal" and cot.student.pretrained == "required" and cot.student.gguf_package
    assert cot.student.peft.enabled
    assert list(cot.evaluation.models) == ["initial", "student"]
    assert [s.name for s in cot.dataset.eval_sets] == ["svamp"] and cot.evaluation.bbh is None
    assert cot.evaluation.batch_size >= cot.evaluation.limit  # the problems in one generation batch


@pytest.mark.parametrize("override", ["trainer.max_stepz=3", "data.batchsize=2", "student.size.d_mdl=8"])
def test_mistyped_key_fails_clearly(override: str) -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose_config([override])


def test_unknown_group_option_lists_choices() -> None:
    with pytest.raises(ConfigCompositionException, match="flan_t5_small"):
        compose_config(["student=flan_t5_smal"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=0", "data.batch_size"),
        ("stage.steps=[distil]", "stage.steps"),
        ("evaluation.limit=0", "evaluation.limit"),
    ],
)
def test_validate_names_the_bad_key(override: str, key: str) -> None:
    cfg = compose_config([override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(cfg)


def test_every_experiment_and_debug_config_composes(tmp_path: Path) -> None:
    # optuna_* select Hydra's Optuna sweeper, which only the `sweep` extra installs
    has_optuna = has_module("hydra_plugins.hydra_optuna_sweeper")
    for group in ("experiment", "debug", "hparams_search"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            if path.stem.startswith("optuna") and not has_optuna:
                continue
            cfg = compose_config([f"{group}={path.stem}"], run_dir=tmp_path)
            assert cfg.stage.steps, path


def test_cli_rejects_a_mistyped_key(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", "trainer.max_stepz=3", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode != 0
    assert "trainer.max_stepz" in proc.stderr


def test_every_dataset_config_names_loadable_splits() -> None:
    from omegaconf import OmegaConf

    from mwp.data.loaders import load_problems, register_dataset

    for path in sorted((CONF_DIR / "dataset").glob("*.yaml")):
        cfg = compose_config([f"dataset={path.stem}"])
        if cfg.dataset.get("source") is not None:  # a custom dataset: what validation registers
            register_dataset(cfg.dataset.name, OmegaConf.to_container(cfg.dataset.source, resolve=True))
        train = load_problems(cfg.dataset.name, cfg.dataset.train_split, cfg.paths.data_dir, limit=2)
        assert len(train) == 2, path
        train_ids = {
            p.id for p in load_problems(cfg.dataset.name, cfg.dataset.train_split, cfg.paths.data_dir)
        }
        for spec in cfg.dataset.eval_sets:
            test = load_problems(spec.name, spec.split, cfg.paths.data_dir)
            assert test, (path, spec)
            if spec.role == "in-distribution":
                assert not train_ids & {p.id for p in test}, f"{path.stem}: {spec.split} overlaps training"


# --- the schema: every mistake named, before any work ----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], r"^optim\.lr: .*greater than 0 \(got -1\)"),
        (["trainer.precision=16-mixed"], r"^trainer\.precision: T5 overflows in float16"),
        (["dataset=multiarith"], r"^teacher\.dataset: the recorded teacher 'palm-540b' covers 'svamp'"),
        (["dataset.limit=0"], r"^dataset\.limit: .*(got 0)"),
        (["dataset.limit=-3"], r"^dataset\.limit: .*(got -3)"),
        (["trainer.max_steps=0"], r"^trainer\.max_steps: train for >= 1 step"),
        (["teacher=openai", "teacher.model=null"], r"teacher\.model: "),
        (["data.formats=[zero_shot]"], r"^data\.formats\.0: .*zero_shot_cot"),
        (["loss=ce_kl", "loss.signal.source=dense"], r"loss\.signal\.teacher_model"),
        (["loss.terms.0.weight=-1"], r"^loss\.terms\.0\.weight must be a finite number >= 0"),
        (["stage=train"], r"^stage\.data: "),
        (["stage=evaluate"], r"^stage\.student: "),
        (["logger.wandb.mode=onlin"], r"^logger\.wandb\.mode='onlin'"),
        (["stage.num_shards=2", "stage.shard=2"], r"stage\.shard=2 must be < stage\.num_shards=2"),
        (["dataset.eval_sets.0.split=dev"], r"^dataset\.eval_sets\.0\.split='dev': svamp has splits"),
        (["+trainer.max_stepz=3"], r"^trainer\.max_stepz: unknown key"),
        (
            ["student=flan_t5_small", "student.size.d_model=64"],
            r"^student\.size\.d_model: .*pretrained=never",
        ),
        (["teacher=hf"], r"teacher\.model: "),
        # vllm serves whatever model it was started with: no default name may slip through from openai
        (["teacher=vllm"], r"^teacher\.model: "),
        (["teacher=llamacpp"], r"^teacher\.model: "),
    ],
)
def test_schema_names_the_full_key_and_the_value(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(compose_config(overrides))
    assert any(re.search(message, line) for line in str(err.value).splitlines()), str(err.value)


def test_every_config_group_option_composes_and_validates(tmp_path: Path) -> None:
    from mwp.cli.config import group_options

    needs = {
        "stage": {"train": [f"stage.data={tmp_path}"], "evaluate": [f"stage.student={tmp_path}"]},
        "teacher": {
            "hf": ["teacher.model=x"],
            "batch_file": ["teacher.results=x"],
            "vllm": ["teacher.model=x"],
            "llamacpp": ["teacher.model=x"],
        },
        "dataset": {
            name: ["teacher=smollm2"]
            for name in (
                "gsm8k",
                "multiarith",
                "asdiv_a",
                "math23k",
                "weak12k",
                "example_custom",
                "mawps_svamp",
            )
        },
        "experiment": {
            **{name: [f"stage.data={tmp_path}"] for name in ("kd_effect", "kd_effect_teacher")},
            # its teacher is a folder the user makes (experiments/specialize_smollm2/make_teacher.py)
            "specialize_smollm2_kd": [f"loss.signal.teacher_model={tmp_path}"],
            # Fu et al.'s reproductions and Weak12K name no teacher model: it has to be pointed at one
            **{
                name: ["teacher.model=x"]
                for name in (
                    "fu2023_gsm8k",
                    "fltt_weak12k",
                    *(f"fu2023_flan_t5_{s}" for s in ("base", "large", "xl", "xxl")),
                )
            },
        },
    }
    has_optuna = has_module("hydra_plugins.hydra_optuna_sweeper")
    for group, options in group_options().items():
        for option in options:
            if group == "hparams_search" and option.startswith("optuna") and not has_optuna:
                continue
            overrides = [f"{group}={option}", *needs.get(group, {}).get(option, [])]
            settings = load_config(compose_config(overrides, run_dir=tmp_path))
            assert settings.stage.steps, overrides


def test_trainer_options_build_their_strategies() -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.t5.modeling_t5 import T5Block

    fsdp = compose_config(["trainer=fsdp"]).trainer
    strategy = instantiate(fsdp.strategy, _convert_="all")
    assert isinstance(strategy, FSDPStrategy)
    assert fsdp.precision == "bf16-mixed" and fsdp.accelerator == "gpu"
    assert load_config(compose_config(["trainer=ddp"])).trainer.strategy == "ddp"
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    from mwp.student.model import transformer_block_classes

    assert {T5Block, LlamaDecoderLayer, Qwen2DecoderLayer} <= transformer_block_classes()


def test_checking_a_config_imports_no_model_library() -> None:
    script = (
        "import sys, time; t = time.perf_counter()\n"
        "from tests.helpers import compose_config\n"
        "from mwp.config import ConfigError\nfrom mwp.stages import load_config\n"
        "try:\n    load_config(compose_config(['optim.lr=-1']))\nexcept ConfigError as e:\n    print(e)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=CONF_DIR.parent
    )
    assert proc.returncode == 0, proc.stderr
    assert "optim.lr" in proc.stdout and proc.stdout.strip().endswith("[]")


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mwp.cli", *args, f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )


def test_a_config_error_is_one_line_before_any_work(tmp_path: Path) -> None:
    proc = _cli("optim.lr=-1", "dataset.limit=0", tmp_path=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "mwp: error: dataset.limit: Input should be greater than or equal to 1 (got 0)",
        "mwp: error: optim.lr: Input should be greater than 0 (got -1)",
    ]
    assert "Traceback" not in proc.stderr and "distilled" not in proc.stderr
    # No orphan run folder and no W&B run: nothing was claimed.
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    # The traceback is there when asked for.
    debug = _cli("optim.lr=-1", "debug_traceback=true", tmp_path=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_help_offers_only_real_options_and_points_to_mwp_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mwp.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "stage: distill, evaluate, fltt, pipeline, train" in proc.stdout
    assert "refine: enumeration, middle_model, none, teacher_feedback" in proc.stdout
    # no private helper option (a `_base.yaml` and the like) is offered
    assert not re.search(r"(: |, )_\w", proc.stdout) and "mwp-config" in proc.stdout


def test_mwp_config_lists_every_key_with_help_and_checks_overrides() -> None:
    from mwp.cli.config import main

    script = Path(sys.executable).parent / "mwp-config"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mwp.cli.config"]
    listed = subprocess.run([*command, "teacher=openai"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(
        line.startswith("teacher.concurrency = 16") and "# requests in flight" in line for line in lines
    )
    assert any(line.startswith("data.batch_size = 8") and "#" in line for line in lines)
    assert any(line.startswith("callbacks.model_checkpoint._target_ = ") for line in lines)
    bad = subprocess.run(
        [*command, "--check", "data.batch_size=0"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "data.batch_size" in bad.stderr
    with pytest.raises(SystemExit):
        main(["--check", "trainer.precision=16"])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["paths.data_dir=/nonexistent/data"], "paths.data_dir"),
        (["stage=train", "stage.data=/nonexistent/distill"], "stage.data"),
        (["stage=evaluate", "stage.student=/nonexistent/student"], "stage.student"),
        (["stage.resume=/nonexistent/run"], "stage.resume"),
        (["student=flan_t5_tiny", "student.fallback_config=/nonexistent/t5"], "student.fallback_config"),
    ],
)
def test_missing_inputs_fail_at_validation_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(key)}='/nonexistent/[a-z0-9]+': no such file or folder"
    ):
        load_config(compose_config(overrides))


def test_experiments_compose_with_every_logger_option(tmp_path: Path) -> None:
    for logger in ("default", "csv", "wandb"):
        settings = load_config(compose_config(["experiment=demo", f"logger={logger}"], run_dir=tmp_path))
        assert settings.tags == ["demo"]
        entries = {name for name, entry in settings.logger.items() if entry is not None}
        assert entries == {"default": {"csv", "wandb"}, "csv": {"csv"}, "wandb": {"wandb"}}[logger]


@pytest.mark.parametrize(
    ("formats", "expected"),
    [
        (["in_context_cot"], "zero_shot_cot"),
        (["zero_shot_answer", "in_context_answer"], "zero_shot_answer"),
        (["zero_shot_answer", "zero_shot_cot"], "zero_shot_cot"),
        (["equation"], "equation"),
    ],
)
def test_validation_format_follows_the_training_formats(formats: list[str], expected: str) -> None:
    listed = "[" + ",".join(formats) + "]"
    cfg = compose_config(["experiment=fu2023_flan_t5_base", "teacher.model=x", f"data.formats={listed}"])
    assert cfg.data.eval_format == expected
    assert list(cfg.evaluation.formats) == formats


# Per size: (accumulation, micro-batch = their in-context CoT size, loss), from their recorded commands.
FU2023_SIZES = {
    "fu2023_flan_t5_base": (3, 25, "ce"),
    "fu2023_flan_t5_large": (20, 8, "ce"),
    "fu2023_flan_t5_xl": (30, 2, "fu2023"),
    "fu2023_flan_t5_xxl": (20, 4, "fu2023"),
}


@pytest.mark.parametrize("experiment", sorted(FU2023_SIZES))
def test_fu2023_experiments_compose_and_validate_with_the_published_settings(
    experiment: str, tmp_path: Path
) -> None:
    settings = load_config(compose_config([f"experiment={experiment}", "teacher.model=x"], run_dir=tmp_path))
    accumulate, micro, loss = FU2023_SIZES[experiment]
    data, optim, trainer = settings.data, settings.optim, settings.trainer
    assert set(data.formats) == {"zero_shot_cot", "zero_shot_answer", "in_context_cot", "in_context_answer"}
    assert (data.exemplars, data.num_exemplars, data.eval_format) == ("gold", 4, "zero_shot_cot")
    # their 200-problem GSM8K-train dev split, held out here by question
    assert data.val_size == 200 and settings.dataset.name == "gsm8k"
    assert min(data.batch_size_by_format.values()) == data.batch_size_by_format["in_context_cot"] == micro
    assert (optim.lr, optim.weight_decay, optim.weight_decay_on) == (5e-4, 0.01, "all")
    assert (optim.scheduler, optim.warmup_steps, optim.schedule_length) == ("cosine", 10, "micro_batches")
    assert trainer.gradient_clip_val is None and trainer.accumulate_grad_batches == accumulate
    assert trainer.max_epochs == 10
    kinds = {term.kind for term in settings.loss.terms}
    assert kinds == ({"ce"} if loss == "ce" else {"ce", "forward_kl"})
    if loss == "fu2023":
        assert settings.loss.signal.alignment == "fu2023"
    teacher = settings.teacher
    assert (teacher.endpoint, teacher.temperature, teacher.max_tokens, teacher.n) == (
        "completions",
        0.5,
        256,
        40,
    )
    assert teacher.top_logprobs == 5
    prompt = settings.prompt
    assert (prompt.name, prompt.selection, len(prompt.exemplar_ids), prompt.num_exemplars) == (
        "fu2023_complex",
        "fixed",
        8,
        8,
    )
    evaluation = settings.evaluation
    assert evaluation.bbh is not None and evaluation.bbh.prompt == "cot" and evaluation.paper_metric
    assert evaluation.num_exemplars == 4 and evaluation.select_extraction == "strict"
    # one format per run stays one override away
    single = load_config(
        compose_config([f"experiment={experiment}", "teacher.model=x", "data.formats=[zero_shot_cot]"])
    )
    assert single.data.formats == single.evaluation.formats == ["zero_shot_cot"]
