"""Sharding, shard merging, the usage ledger and the progress bar."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from mwp.data.shards import merge_distilled, merge_shards, read_jsonl_tolerant, shard
from mwp.progress import SamplingProgress
from mwp.teachers.usage import UsageLedger, teacher_usage


@dataclass
class Item:
    id: str


def test_shards_are_disjoint_cover_everything_and_ignore_order():
    items = [Item(f"gsm8k/train/{i}") for i in range(500)]
    parts = [shard(items, i, 4) for i in range(4)]
    ids = [x.id for part in parts for x in part]
    assert sorted(ids) == sorted(x.id for x in items)
    assert len(set(ids)) == len(ids)
    assert all(60 < len(part) < 190 for part in parts)  # a hash, not everything in one shard
    reversed_parts = [shard(list(reversed(items)), i, 4) for i in range(4)]
    assert [{x.id for x in p} for p in reversed_parts] == [{x.id for x in p} for p in parts]
    # a shard of a prefix is the prefix of the shard (a `limit` does not reshuffle)
    assert {x.id for x in shard(items[:100], 2, 4)} == {
        x.id for x in parts[2] if int(x.id.rsplit("/", 1)[1]) < 100
    }


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError, match=r"stage\.num_shards"):
        shard([], 0, 0)
    with pytest.raises(ValueError, match=r"stage\.shard"):
        shard([], 3, 3)


def test_merge_shards_drops_duplicates_and_torn_lines(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": "1", "s": 0}) + "\n" + json.dumps({"id": "2", "s": 0}) + "\n")
    b.write_text(
        json.dumps({"id": "2", "s": 0}) + "\n" + json.dumps({"id": "3", "s": 1}) + "\n" + '{"id": "4", "s'
    )
    out = tmp_path / "merged" / "all.jsonl"
    assert merge_shards([a, b], out, sort_key=lambda r: r["id"]) == 3
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "2", "3"]
    assert merge_shards([a, b], out, key=lambda r: r["s"]) == 2
    with pytest.raises(FileNotFoundError, match=r"c\.jsonl"):
        merge_shards([a, tmp_path / "c.jsonl"], out)


def test_merge_distilled_checks_rows_and_drops_torn_lines(tmp_path):
    from fractions import Fraction

    from mwp.data.artifact import DistilledRow, read_distilled, write_distilled
    from mwp.data.io import DataError
    from mwp.data.problem import Problem

    def row(pid: str, rationale: str) -> DistilledRow:
        problem = Problem(id=pid, question=f"q {pid}", answer=Fraction(1), answer_text="1")
        return DistilledRow(problem=problem, rationale=rationale, teacher="t", sample_index=0, pred="1")

    a, b = tmp_path / "a" / "distilled.jsonl", tmp_path / "b" / "distilled.jsonl"
    write_distilled(a, [row("1", "x"), row("2", "y")])
    write_distilled(b, [row("2", "y"), row("3", "z")])
    with b.open("a") as handle:
        handle.write('{"id": "4", "ratio')
    out = tmp_path / "merged" / "distilled.jsonl"
    assert merge_distilled([a, b], out) == 3
    assert [r.id for r in read_distilled(out)] == ["1", "2", "3"]
    a.write_text(a.read_text() + json.dumps({"id": "5", "problem": {"id": "5"}}) + "\n")
    with pytest.raises(DataError, match=r"a/distilled\.jsonl:3: field 'problem\.question' is missing"):
        merge_distilled([a, b], out)
    assert [r.id for r in read_distilled(out)] == ["1", "2", "3"]  # a failed merge publishes nothing


def test_read_jsonl_tolerant_reports_complete_end(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\n{"c"')
    rows, end = read_jsonl_tolerant(path)
    assert rows == [{"a": 1}, {"b": 2}]
    assert end == len(b'{"a": 1}\n\n{"b": 2}\n')
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2"):
        read_jsonl_tolerant(path)


def test_usage_ledger_cost_and_teacher_usage(tmp_path):
    ledger = UsageLedger(price_input_per_1m=1.5, price_output_per_1m=6.0)
    ledger.record_call(prompt_tokens=1000, completion_tokens=500, samples=4)
    ledger.record_call(prompt_tokens=1000, completion_tokens=1500, samples=4)
    assert ledger.cost_usd == pytest.approx((2000 * 1.5 + 2000 * 6.0) / 1e6)
    assert json.loads(ledger.write(tmp_path / "usage.json").read_text())["samples"] == 8
    assert teacher_usage(object()).calls == 0


def test_sampling_progress_counts(capsys):
    with SamplingProgress(total=10, disable=True) as progress:
        progress.update(samples=4, kept=1, cost=0.25)
        progress.update(samples=6, kept=2)
    assert (progress.samples, progress.kept, progress.cost_usd) == (10, 3, 0.25)


def test_merge_command(tmp_path, capsys):
    from mwp.data.shards import main

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": "1", "rationale": "x", "sample_index": 0}) + "\n")
    b.write_text(json.dumps({"id": "1", "rationale": "x", "sample_index": 3}) + "\n")
    main(["merge", str(tmp_path / "all.jsonl"), str(a), str(b), "--key", "id", "rationale"])
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 1
    assert "1 rows" in capsys.readouterr().out
