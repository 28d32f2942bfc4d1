"""Span alignment (`loss.signal.alignment=span`): teacher and student tokens grouped by character offsets.

Real tokenizers throughout: Flan-T5 as the student, SmolLM2 (from its GGUF) as the teacher, on real
GSM8K gold solutions and SVAMP PaLM rationales. Where a test needs teacher top-k without running
SmolLM2, the teacher's own tokenization carries a synthetic top-k (the actual token first); the
slow test reads SmolLM2's real top-k.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mwp.config import ConfigError
from mwp.data.artifact import DistilledRow, TokenLogprobs
from mwp.data.formats import cot_target
from mwp.data.loaders import load_problems
from mwp.data.text import to_student_text
from mwp.signals import SignalStore, SparseBatch, collate_sparse, prepare_signals
from mwp.signals.alignment import SpanAligner, TokenAligner, make_aligner, normalize_token, teacher_token_text
from mwp.stages import load_config
from tests.helpers import compose_config
from tests.signals import test_alignment as shared

# The session fixtures of the DTW tests: the same tokenizers, texts and SmolLM2 model.
gsm8k_solutions = shared.gsm8k_solutions
svamp_completions = shared.svamp_completions
smollm2_tokenizer = shared.smollm2_tokenizer
smollm2_model = shared.smollm2_model
t5_tokenizer = shared.t5_tokenizer


def logprobs_of(tokens: list[str], top: list[list[tuple[str, float]]] | None = None) -> TokenLogprobs:
    """Teacher tokens with distinct logprobs (-0.1, -0.2, ...) and a top-k that starts with the token."""
    logprobs = [-0.1 * (i + 1) for i in range(len(tokens))]
    top = top or [[] for _ in tokens]
    return TokenLogprobs(
        tokens=tokens,
        logprobs=logprobs,
        top_tokens=[[t, *(a for a, _ in extra)] for t, extra in zip(tokens, top, strict=True)],
        top_logprobs=[[lp, *(x for _, x in extra)] for lp, extra in zip(logprobs, top, strict=True)],
    )


def synthetic_teacher(tokenizer, text: str) -> TokenLogprobs:
    """SmolLM2's real tokenization of `text` with a synthetic top-k (the actual token as top-1)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return TokenLogprobs(
        tokens=tokens,
        logprobs=[-0.1] * len(tokens),
        top_tokens=[[t] for t in tokens],
        top_logprobs=[[-0.1]] * len(tokens),
    )


def dist(alignment, position: int) -> dict[int, float]:
    """The shared slots of one position (unshared ones: `test_unshared_slots`)."""
    signal = alignment.signal
    ids, logprobs, shared = signal.ids[position], signal.logprobs[position], signal.in_vocab[position]
    return {int(i): float(p) for i, p, s in zip(ids, logprobs, shared, strict=True) if i >= 0 and s}


# --- analytic cases -----------------------------------------------------------------------------------


def test_one_student_number_over_teacher_digits_gets_the_sum_of_their_logprobs(t5_tokenizer) -> None:
    vocab = t5_tokenizer.get_vocab()
    # "Tom has 48 marbles." as SmolLM2 writes it: the number digit by digit after a bare space token.
    tokens = ["Tom", "Ġhas", "Ġ", "4", "8", "Ġmarbles", "."]
    teacher = logprobs_of(tokens, top=[[], [], [("Ġtwo", -2.0), ("Ġ⁂", -3.0)], [("5", -1.5)], [], [], []])
    alignment = SpanAligner(t5_tokenizer).align(teacher, "Tom has 48 marbles.")
    pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
    assert pieces == ["▁Tom", "▁has", "▁48", "▁marble", "s", ".", "</s>"]
    assert alignment.spans == [([0], [0]), ([1], [1]), ([2, 3, 4], [2]), ([5], [3, 4]), ([6], [5])]
    lp = teacher.logprobs
    # The chain rule: p(▁48) = p(Ġ) p(4 | Ġ) p(8 | Ġ4); the alternatives come from the first covered
    # position (Ġ's top-k), " two" -> ▁two; " ⁂" has no student token: an unshared slot.
    assert dist(alignment, 2) == pytest.approx({vocab["▁48"]: lp[2] + lp[3] + lp[4], vocab["▁two"]: -2.0})
    # One teacher token over two student tokens: the first gets all of it, the rest probability 1.
    assert dist(alignment, 3) == pytest.approx({vocab["▁marble"]: lp[5]})
    assert dist(alignment, 4) == {vocab["s"]: 0.0}
    assert math.fsum(dist(alignment, 3).values()) + dist(alignment, 4)[vocab["s"]] == pytest.approx(lp[5])
    assert alignment.coverage == 1.0 and alignment.signal.mask.tolist() == [True] * 6 + [False]
    assert alignment.by_type() == {"number": (1, 1), "word": (4, 4), "punctuation": (1, 1)}


def test_crossing_boundaries_make_one_span(t5_tokenizer) -> None:
    tokens = ["N", "atal", "ia", "Ġsold"]
    alignment = SpanAligner(t5_tokenizer).align(logprobs_of(tokens), "Natalia sold")
    pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
    assert pieces[:2] == ["▁Nat", "alia"]
    assert alignment.spans[0] == ([0, 1, 2], [0, 1])
    assert dist(alignment, 0)[alignment.student_ids[0]] == pytest.approx(-0.1 - 0.2 - 0.3)
    assert dist(alignment, 1) == {alignment.student_ids[1]: 0.0}


def test_unknown_characters_and_dropped_newlines(t5_tokenizer) -> None:
    vocab = t5_tokenizer.get_vocab()
    # A newline the student rewrite turns into a sentence break, and one after a full stop it drops.
    tokens = [
        "Sam",
        "Ġhas",
        "Ġ",
        "3",
        "Ġmarbles",
        "Ċ",
        "He",
        "Ġbuys",
        "Ġ",
        "1",
        "2",
        ".",
        "Ċ",
        "So",
        "Ġ{",
        "5",
        "}",
    ]
    teacher = logprobs_of(tokens)
    text = "".join(teacher_token_text(t) for t in tokens)
    assert text == "Sam has 3 marbles\nHe buys 12.\nSo {5}"
    student_text = to_student_text(text)
    alignment = SpanAligner(t5_tokenizer, student_text_fn=to_student_text).align(teacher)
    pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
    assert "(" in student_text  # the rewrite turns braces into parentheses
    lp = teacher.logprobs
    spans = {tuple(s): t for t, s in alignment.spans}
    by_piece = {pieces[s[0]]: (t, s) for t, s in alignment.spans}
    # "marbles\nHe" -> "marbles. He": the student's "." is the teacher's newline.
    full_stop = pieces.index(".")
    assert spans[(full_stop,)] == [5] and dist(alignment, full_stop) == pytest.approx({vocab["."]: lp[5]})
    assert by_piece["▁He"][0] == [6]
    # "12.\nSo": the newline is dropped; its probability goes with the word after it.
    assert by_piece["▁So"][0] == [12, 13]
    assert dist(alignment, by_piece["▁So"][1][0])[vocab["▁So"]] == pytest.approx(lp[12] + lp[13])
    # Flan-T5 has no "{": through the rewrite "{5}" -> "(5)" it is still covered, with the teacher's
    # probability of the braces it wrote.
    assert alignment.coverage == 1.0

    # Without the rewrite the student has <unk> there: never covered, and not a target.
    raw = SpanAligner(t5_tokenizer).align(teacher, text)
    raw_pieces = t5_tokenizer.convert_ids_to_tokens(raw.student_ids)
    assert "<unk>" in raw_pieces
    covered = {s for _, s in raw.pairs}
    assert not any(raw_pieces[s] == "<unk>" for s in covered)
    assert {raw_pieces[s] for s in covered} >= {"▁Sam", "▁has", "▁He", "▁buy", "s", "▁12.", "5"}


def test_identical_tokenizers_give_the_identity_alignment(t5_tokenizer, gsm8k_solutions) -> None:
    aligner = SpanAligner(t5_tokenizer)
    for text in gsm8k_solutions[:20]:
        text = to_student_text(text)
        ids = t5_tokenizer(text)["input_ids"][:-1]  # the teacher has no EOS
        pieces = t5_tokenizer.convert_ids_to_tokens(ids)
        if "<unk>" in pieces:
            continue
        teacher = logprobs_of(pieces)
        alignment = aligner.align(teacher, text)
        assert alignment.spans == [([i], [i]) for i in range(len(ids))]
        for i in range(len(ids)):
            assert dist(alignment, i) == pytest.approx({ids[i]: teacher.logprobs[i]})


def test_alignment_key_is_validated_before_any_work() -> None:
    assert load_config(compose_config(["loss=ce_kl"])).loss.signal.alignment == "span"
    assert (
        load_config(compose_config(["loss=ce_kl", "loss.signal.alignment=dtw"])).loss.signal.alignment
        == "dtw"
    )
    with pytest.raises(ConfigError, match=r"loss\.signal\.alignment"):
        load_config(compose_config(["loss=ce_kl", "loss.signal.alignment=diagonal"]))
    with pytest.raises(ValueError, match=r"loss\.signal\.alignment"):
        make_aligner("diagonal", None)  # type: ignore[arg-type]


# --- real tokenizers on real text ---------------------------------------------------------------------


@pytest.mark.parametrize("corpus", ["gsm8k", "svamp"])
def test_real_text_is_covered_numbers_included(
    corpus, smollm2_tokenizer, t5_tokenizer, gsm8k_solutions, svamp_completions
) -> None:
    texts = gsm8k_solutions if corpus == "gsm8k" else svamp_completions
    span = SpanAligner(t5_tokenizer, student_text_fn=to_student_text)
    dtw = TokenAligner(t5_tokenizer, student_text_fn=to_student_text)
    totals = {"number": [0, 0], "word": [0, 0], "punctuation": [0, 0]}
    covered = targets = dtw_covered = 0
    for text in texts:
        teacher = synthetic_teacher(smollm2_tokenizer, text)
        alignment = span.align(teacher)
        assert alignment.student_ids == t5_tokenizer(to_student_text(text))["input_ids"]
        pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
        for span_teacher, span_students in alignment.spans:
            # Independent check: the digits a span's student tokens spell are the digits of its
            # teacher tokens (notes and rewrites never bring in other numbers).
            student_digits = "".join(ch for s in span_students for ch in pieces[s] if ch.isdigit())
            teacher_digits = "".join(ch for t in span_teacher for ch in teacher.tokens[t] if ch.isdigit())
            assert student_digits == teacher_digits, (text, span_teacher, span_students)
            # The first position holds the span's logprob, every later one probability 1.
            first, *rest = span_students
            expected = sum(teacher.logprobs[t] for t in span_teacher)
            assert dist(alignment, first)[alignment.student_ids[first]] == pytest.approx(expected, abs=1e-5)
            assert all(dist(alignment, s) == {alignment.student_ids[s]: 0.0} for s in rest)
        for name, (c, n) in alignment.by_type().items():
            totals[name][0] += c
            totals[name][1] += n
        covered += len(alignment.pairs)
        targets += alignment.n_targets
        dtw_covered += len(dtw.align(teacher).pairs)
    assert covered / targets >= 0.95
    assert totals["number"][0] / totals["number"][1] >= 0.95
    assert covered > dtw_covered


def test_plain_text_spans_hold_the_same_characters(
    smollm2_tokenizer, t5_tokenizer, svamp_completions
) -> None:
    """No rewrite: every span's teacher and student tokens spell the same text (up to whitespace)."""
    aligner = SpanAligner(t5_tokenizer)
    for text in svamp_completions:
        teacher = synthetic_teacher(smollm2_tokenizer, text)
        alignment = aligner.align(teacher, text)
        pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
        for span_teacher, span_students in alignment.spans:
            teacher_text = "".join(
                normalize_token(teacher_token_text(teacher.tokens[t])) for t in span_teacher
            )
            assert teacher_text == "".join(normalize_token(pieces[s]) for s in span_students)


# --- end to end: rows -> store -> batch -> loss --------------------------------------------------------


def test_span_signals_feed_the_kl_loss(
    smollm2_tokenizer, t5_tokenizer, flan_t5_dir, data_dir, tmp_path
) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    from mwp.config.schema.loss_terms import LossTerm
    from mwp.student.losses import combine

    problems = load_problems("gsm8k", "train", data_dir, limit=6)
    rows = [
        DistilledRow(
            problem=p,
            rationale=p.solution or "",
            teacher="SmolLM2 tokenization, synthetic top-1 (simulation)",
            sample_index=0,
            logprobs=synthetic_teacher(smollm2_tokenizer, p.solution or ""),
        )
        for p in problems
    ]
    max_len = 96
    reports = {}
    for method in ("span", "dtw"):
        path = tmp_path / f"{method}.safetensors"
        store, reports[method] = prepare_signals(
            rows, t5_tokenizer, path, max_target_len=max_len, alignment=method
        )
        saved = json.loads(path.with_suffix(".coverage.json").read_text())
        assert saved["alignment"] == method and set(saved["coverage_by_type"]) == {
            "number",
            "word",
            "punctuation",
        }
    assert reports["span"].coverage >= 0.95 > reports["dtw"].coverage
    number_covered, number_total = reports["span"].by_type["number"]
    assert number_total > 0 and number_covered / number_total >= 0.95

    store = SignalStore(tmp_path / "span.safetensors")
    targets = [cot_target(row.problem, row.rationale) for row in rows]
    encoded = t5_tokenizer(targets, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    batch = collate_sparse([store[i] for i in range(len(store))], labels.shape[1], labels=labels)
    assert batch["teacher_mask"].sum().item() == reports["span"].covered_tokens  # labels agree everywhere

    config = T5Config.from_pretrained(flan_t5_dir)
    for key, value in {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1}.items():
        setattr(config, key, value)
    config.num_decoder_layers = 1
    torch.manual_seed(0)
    student = T5ForConditionalGeneration(config)
    sources = t5_tokenizer([r.problem.question for r in rows], padding=True, return_tensors="pt")
    logits = student(**sources, labels=labels).logits
    loss = combine(
        [LossTerm("ce"), LossTerm("kl", weight=0.5)], logits, labels, SparseBatch.from_batch(batch)
    )
    loss.total.backward()
    assert torch.isfinite(loss.total) and loss.parts["kl"].item() > 0
    assert loss.n_tokens["kl"].item() == reports["span"].covered_tokens


@pytest.mark.slow
def test_real_teacher_top_k_through_span_alignment(
    smollm2_model, smollm2_tokenizer, t5_tokenizer, data_dir
) -> None:
    with open(Path(data_dir) / "teacher" / "svamp_palm" / "svamp_train.json") as handle:
        questions = [json.loads(line)["input"] for line in handle][:3]
    with open(Path(data_dir) / "teacher" / "svamp_palm" / "train_CoT_0.json") as handle:
        completions = [c.split("\n\nQ:")[0] for c in json.load(handle)[:3]]
    aligner = SpanAligner(t5_tokenizer, student_text_fn=to_student_text)
    for question, completion in zip(questions, completions, strict=True):
        tokens = shared.real_top_k(
            smollm2_model, smollm2_tokenizer, f"Q: {question}\nA:", " " + completion, k=10
        )
        alignment = aligner.align(tokens)
        assert alignment.coverage >= 0.95
        for span_teacher, span_students in alignment.spans:
            first = span_students[0]
            row = dist(alignment, first)
            target = alignment.student_ids[first]
            # The span's probability, plus that of alternatives spelling the same student token.
            assert row[target] >= sum(tokens.logprobs[t] for t in span_teacher) - 1e-4
            assert math.fsum(math.exp(v) for v in row.values()) <= 1.01
            assert list(row.values()) == sorted(row.values(), reverse=True)
