"""`dataset`: the training set, a custom dataset's files, and the sets the student is evaluated on."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from mwp.config.schema.base import Section, help_field


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
