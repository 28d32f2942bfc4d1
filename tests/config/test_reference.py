"""The config reference the documentation is generated from: every key, its type, default, choices and help."""

from __future__ import annotations

from typing import Literal

import pytest

from mwp.config import describe
from mwp.config.reference import REQUIRED, config_reference
from mwp.config.schema import (
    MISSING_SIGNAL,
    SIGNAL_ALIGNMENTS,
    TEACHER_SCHEMAS,
    LossConfig,
    LossTerm,
    OpenAITeacherConfig,
    OptimConfig,
    RunConfig,
    Section,
    help_field,
)
from mwp.config.schema.loss_terms import TAILS, TARGETS
from tests.helpers import typed_config


def by_key(schema: type, prefix: str = "") -> dict:
    return {row.key: row for row in config_reference(schema, prefix)}


def test_a_key_has_its_type_default_range_and_help() -> None:
    lr = by_key(OptimConfig, "optim.")["optim.lr"]
    assert (lr.type, lr.default, lr.allowed) == ("float", "0.0005", "> 0, <= 1")
    assert lr.help == OptimConfig.model_fields["lr"].description


def test_choices_come_from_the_literal_and_required_keys_say_so() -> None:
    rows = by_key(LossConfig, "loss.")
    assert rows["loss.signal.alignment"].allowed == ", ".join(SIGNAL_ALIGNMENTS)
    assert rows["loss.signal.missing"].allowed == ", ".join(MISSING_SIGNAL)
    assert rows["loss.terms"].default == REQUIRED
    assert rows["loss.signal.scorer.device"].default == "cpu"  # nested sections are expanded
    assert rows["loss.signal"].section and not rows["loss.signal.source"].section


def test_loss_terms_are_documented_from_the_dataclass() -> None:
    rows = by_key(LossTerm, "loss.terms[i].")
    assert rows["loss.terms[i].tail"].allowed == ", ".join(TAILS)
    assert rows["loss.terms[i].targets"].allowed == ", ".join(TARGETS)
    assert rows["loss.terms[i].name"].default == REQUIRED
    assert rows["loss.terms[i].top_k"].type == "int | null"
    assert rows["loss.terms[i].weight"].help == LossTerm.__dataclass_fields__["weight"].metadata["help"]


def test_operational_keys_are_marked() -> None:
    rows = by_key(OpenAITeacherConfig, "teacher.")
    assert rows["teacher.concurrency"].operational
    assert not rows["teacher.model"].operational


def test_a_changed_help_string_changes_the_row() -> None:
    class Example(Section):
        mode: Literal["a", "b"] | None = help_field(None, help="the first help")

    (row,) = config_reference(Example, "example.")
    assert (row.key, row.type, row.default, row.allowed, row.help) == (
        "example.mode",
        "str | null",
        "null",
        "a, b",
        "the first help",
    )


def test_every_key_mwp_config_prints_is_in_the_reference() -> None:
    """What `mwp-config` lists for the default config and a live teacher, minus the entries of open
    mappings (loggers, callbacks) and list items (loss.terms, eval sets: documented as `key[i].field`)."""
    documented = set(by_key(RunConfig))
    for schema in TEACHER_SCHEMAS.values():
        documented |= set(by_key(schema, "teacher."))
    for overrides in ([], ["teacher=openai", "teacher.model=m", "refine=middle_model"]):
        keys = {key for key, _, _ in describe(typed_config(overrides))}
        missing = {
            k for k in keys if k not in documented and not k.startswith(("logger.", "callbacks.", "hydra."))
        }
        assert not missing, sorted(missing)


def test_not_a_schema_is_refused() -> None:
    with pytest.raises(TypeError):
        config_reference(dict)
