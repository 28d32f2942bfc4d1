"""`prompt`: how problems are put to the teacher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from omegaconf import OmegaConf
from pydantic import ValidationError, field_validator, model_validator

from mwp.config.schema.base import Section, help_field


class ExemplarConfig(Section):
    """One exemplar of a fixed exemplar set: a problem written for the prompt, its equation and answer."""

    question: str = help_field(help="the exemplar problem")
    equation: str = help_field(help='its equation, "x=..." with the problem\'s numbers')
    answer: str = help_field(help="its answer (the value of the equation)")

    @field_validator("answer", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _equation_gives_the_answer(self) -> ExemplarConfig:
        from mwp.verify.equations import EquationError, solve_equation
        from mwp.verify.numbers import parse_number

        answer = parse_number(self.answer)
        if answer is None:
            raise ValueError(f"answer={self.answer!r} is not a number")
        try:
            value = solve_equation(self.equation)
        except (EquationError, ValueError) as err:
            raise ValueError(f"equation={self.equation!r} cannot be solved: {err}") from None
        if value != answer:
            raise ValueError(f"equation={self.equation!r} gives {value}, not the answer {self.answer}")
        return self


class PromptConfig(Section):
    """The prompt put to the teacher; `mwp.teachers.prompts` renders it (its built-in templates fill
    every part left null)."""

    name: str = help_field("cot_zeroshot", help="label of the prompt")
    style: Literal["cot", "equation", "equation_chain"] = help_field(
        "cot", help="chain of thought, an equation, or From Large to Tiny's chain of equation calls"
    )
    language: Literal["en", "zh"] = help_field("en", help="prompt language")
    num_exemplars: int = help_field(0, ge=0, le=64, help="few-shot exemplars in the prompt")
    exemplars: list[ExemplarConfig] | None = help_field(
        None,
        help="a fixed exemplar set written into the prompt config, shown in its order (replaces "
        "exemplar_dataset): no gold equation of a dataset reaches the teacher",
    )
    exemplar_dataset: str | None = help_field(None, help="where exemplars come from (its training split)")
    exemplar_split: str = help_field("train", help="split exemplars are drawn from")
    exemplar_limit: int | None = help_field(None, ge=1, help="first N problems of the exemplar split only")
    selection: Literal["complexity", "random", "first", "fixed"] = help_field(
        "complexity", help="exemplar choice (fixed: exemplar_ids, in that order)"
    )
    exemplar_ids: list[str] | None = help_field(
        None,
        help="selection=fixed: the exemplars' problem ids in the exemplar split, in prompt order (a problem "
        "asked is never its own exemplar: it sees the others)",
    )
    seed: int = help_field(0, help="seed of exemplar selection")
    system: str | None = help_field(None, help="system message (chat endpoints)")
    extraction: Literal["strict", "flexible", "equation"] = help_field("strict", help="how answers are read")
    stop: list[str] = help_field([], help="stop sequences added to the teacher's")
    instruction: str | None = help_field(None, help="the instruction before the exemplars (null = built-in)")
    exemplar: str | None = help_field(
        None, help="an exemplar's template, with {question}, {rationale}, {answer}, ... (null = built-in)"
    )
    query: str | None = help_field(None, help="the question's template, with {question} (null = built-in)")
    separator: str | None = help_field(
        None, help="what joins instruction, exemplars and query (null = built-in)"
    )
    masked_query: str | None = help_field(
        None, help="equation_chain: the masked-equation prompt (null = the built-in one of the language)"
    )
    correction_query: str | None = help_field(
        None, help="equation_chain: the format-correction prompt (null = the built-in one of the language)"
    )
    masked_correction_query: str | None = help_field(
        None,
        help="equation_chain: the format-correction prompt of a masked equation (null = the built-in one "
        "of the language)",
    )

    @model_validator(mode="after")
    def _exemplars_need_a_source(self) -> PromptConfig:
        if self.exemplars is not None:
            if self.exemplar_dataset:
                raise ValueError(
                    "prompt.exemplars and prompt.exemplar_dataset: a fixed exemplar set or a dataset to draw "
                    "from, not both (set prompt.exemplar_dataset=null)"
                )
            if self.num_exemplars > len(self.exemplars):
                raise ValueError(
                    f"prompt.num_exemplars={self.num_exemplars} but prompt.exemplars has only "
                    f"{len(self.exemplars)}"
                )
        elif self.num_exemplars and not self.exemplar_dataset:
            raise ValueError(
                "prompt.exemplar_dataset is required when prompt.num_exemplars > 0 (or a fixed set in "
                "prompt.exemplars)"
            )
        if self.selection == "fixed":
            ids = self.exemplar_ids or []
            if len(ids) < self.num_exemplars or len(set(ids)) != len(ids):
                raise ValueError(
                    f"prompt.selection=fixed needs prompt.exemplar_ids: {self.num_exemplars} distinct problem "
                    f"ids at least (prompt.num_exemplars), got {ids}"
                )
        elif self.exemplar_ids is not None:
            raise ValueError(
                f"prompt.exemplar_ids is read with prompt.selection=fixed only, not {self.selection}"
            )
        return self


def prompt_config(value: PromptConfig | Mapping[str, Any] | None) -> PromptConfig:
    """A prompt given as the validated section, a mapping (a config node; checked here, errors name
    `prompt.<key>`) or None (zero-shot chain of thought)."""
    if isinstance(value, PromptConfig):
        return value
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)  # type: ignore[assignment]
    try:
        return PromptConfig.model_validate(dict(value or {}))
    except ValidationError as err:
        problems = []
        for item in err.errors(include_url=False):
            key = ".".join(str(part) for part in item["loc"])
            message = (
                "unknown key"
                if item["type"] == "extra_forbidden"
                else item["msg"].removeprefix("Value error, ")
            )
            problems.append(f"prompt.{key}: {message}" if key else message)
        raise ValueError("; ".join(problems)) from None
