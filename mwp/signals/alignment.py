"""Carry a teacher's per-token top-k distribution over to the student's tokenization.

Three methods (`loss.signal.alignment`): `span` (`SpanAligner`, the default, see its doc) groups
tokens by their character offsets into the smallest spans whose boundaries coincide and carries
the teacher's probability of a span by the chain rule; `dtw` (`TokenAligner`, below) pairs tokens
one to one; `fu2023` (`Fu2023Aligner`) is Fu et al.'s own alignment as their code computes it.
`make_aligner` builds any of them.

`dtw` follows Fu et al. (2023)'s idea: the two token sequences of the same text are aligned by
dynamic time warping (DTW) over token strings, and where a student token corresponds to exactly one
teacher token with the same text, the teacher's top-k alternatives at that token are looked up in
the student vocabulary. Every other student position trains on plain cross-entropy (mask False).

Its choices, where it departs from theirs (`fu2023` keeps theirs):
* Token strings are compared after removing whitespace and its markers (`▁` sentencepiece, `Ġ Ċ ĉ`
  byte-level BPE, real spaces and newlines). Case is kept: both sides tokenize the same text, so
  ignoring it would only add false matches ("the"/"The"). Cost = Levenshtein distance / longer
  length, plus a small tie-break when one side begins a word and the other does not.
* DTW is extended with skips (a token aligned to nothing at a fixed cost), and a warping step costs
  a skip at least: teacher text the student text rewrote or dropped (Flan-T5 has no newline, `<`,
  `{`, ...; GSM8K notes `<<48+24=72>>` are removed) is skipped and stays local, instead of being
  matched for free against the tokens it repeats.
* Only cells inside a band are compared: a student token may pair with a teacher token whose
  character position differs by at most the total length difference plus `band_chars` (which holds
  every pairing of a pure deletion or insertion). `band_chars=None` compares everything.
* A student position carries a distribution only for a one-to-one pair with equal normalised text
  that both begin a word or both do not (`Ġ`+`4` begins a word like `▁4`), whose neighbouring
  characters agree on at least one side (`CONTEXT_CHARS`), and never at special or `<unk>` targets.
  Where the teacher text repeats itself next to a rewrite (a dropped note that restates the
  expression before it) either copy may be taken; both are the same text.
* Each teacher alternative is mapped to the student token spelled the same, with `▁` when the
  alternative begins a word at that position; an alternative no single student token spells keeps
  its own slot, marked unshared (`SparseSignal.in_vocab` False, id `UNSHARED_ID`): the KL terms
  count it as the teacher's missing mass, `hybrid` and `uld` compare its probability. The sampled
  token is always included with its own logprob.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from math import exp, log

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mwp.data.artifact import TokenLogprobs
from mwp.data.text import CALCULATOR_NOTE
from mwp.signals.types import UNSHARED_ID, SparseSignal

SPM_SPACE = "▁"
# GPT-2 style byte-level BPE: the printable stand-ins of space, newline, tab.
_MARKERS = {"Ġ": " ", "Ċ": "\n", "ĉ": "\t", SPM_SPACE: " "}
_MARKER_TABLE = str.maketrans(_MARKERS)

COST_SCALE = 1000  # integer costs keep the vectorised DP exact
_WHITESPACE_MISMATCH = 50
_DEFAULT_GAP = 600
_FAR = 10**6  # outside the band: pairing costs more than any in-band path
_SPECIAL = "\x00special"  # student specials never pair with a teacher token
CONTEXT_CHARS = 3
# Teacher output is untrusted: bound the work one completion can cause.
MAX_TEACHER_TOKENS = 8192
_LONGEST_TOKEN = 64
MATCH_LENGTH_RATIO = 4
MATCH_SLACK_CHARS = 1024
MAX_EXACT_MATCH_CELLS = 4_000_000
# fu2023's full DTW table: 1,000 x 1,000 tokens (Fu et al.'s teacher wrote at most 256).
FU2023_MAX_CELLS = 1_000_000
# One slot of an aligned distribution: student id, teacher logprob, whether the student's vocabulary
# shares the teacher token (False: the id is the placeholder `UNSHARED_ID`).
Slot = tuple[int, float, bool]
# How a student tokenizes a target text: (ids with EOS last, each id's character span), at most max_length ids.
TargetEncoder = Callable[[str, int | None], tuple[list[int], list[tuple[int, int]]]]

logger = logging.getLogger(__name__)


def _byte_level_alphabet() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


_BYTE_OF = _byte_level_alphabet()


def teacher_token_text(token: str) -> str:
    """A teacher token's plain text: API tokens pass through; byte-level BPE pieces are decoded."""
    if token.isascii():
        return token
    if all(ch in _BYTE_OF for ch in token):
        try:
            return bytes(_BYTE_OF[ch] for ch in token).decode("utf-8")
        except UnicodeDecodeError:
            pass  # a partial character (or plain Latin-1 text): keep it as it is
    return token.translate(_MARKER_TABLE)


def normalize_token(text: str) -> str:
    """Text used for matching: markers and whitespace removed, case kept."""
    return "".join(text.translate(_MARKER_TABLE).split())


def starts_with_space(text: str) -> bool:
    return bool(text) and text.translate(_MARKER_TABLE)[:1].isspace()


@lru_cache(maxsize=1 << 17)
def _pair_cost(a: str, b: str) -> int:
    if a == b:
        return 0
    if len(a) > len(b):
        a, b = b, a
    if not a or len(b) > _LONGEST_TOKEN or set(a).isdisjoint(b):
        return COST_SCALE
    if a in b:  # the edit distance of a substring is the length difference
        return (COST_SCALE * (len(b) - len(a))) // len(b)
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        current = [j]
        for i, ca in enumerate(a, 1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (ca != cb)))
        previous = current
    return (COST_SCALE * previous[-1]) // len(b)


def levenshtein_cost(a: str, b: str) -> float:
    """Edit distance between two normalised strings divided by the longer length, in [0, 1]."""
    return _pair_cost(a, b) / COST_SCALE


def dtw_align(
    teacher: Sequence[str],
    student: Sequence[str],
    *,
    teacher_space: Sequence[bool] | None = None,
    student_space: Sequence[bool] | None = None,
    band_chars: int | None = 32,
    gap: float | None = _DEFAULT_GAP / COST_SCALE,
    stretch: float = _DEFAULT_GAP / COST_SCALE,
) -> list[tuple[int, int]]:
    """Monotone DTW alignment of two sequences of normalised token strings, with skips.

    Returns every (teacher index, student index) pair on the optimal path, in order. A diagonal
    step pairs two tokens at their string cost; a warping step (a token held against one more token
    of the other side) costs that plus `stretch`; skipping a token costs `gap`. With the defaults
    a warp never beats a skip, so teacher text the student dropped (a GSM8K note `<<48+24=72>>`
    repeating the expression before it) is skipped instead of being matched for free against the
    tokens it duplicates. `gap=None, stretch=0` is classic DTW. `*_space` flag tokens starting with
    whitespace (a pair that disagrees pays a small tie-break).
    """
    n, m = len(teacher), len(student)
    if n == 0 or m == 0:
        return []
    gap_cost = _FAR * 1000 if gap is None else round(gap * COST_SCALE)
    stretch_cost = round(stretch * COST_SCALE)
    t_space = list(teacher_space) if teacher_space is not None else [False] * n
    s_space = list(student_space) if student_space is not None else [False] * m
    cost = np.full((n, m), _FAR, dtype=np.int64)
    t_len = [len(t) for t in teacher]
    s_len = [0 if s == _SPECIAL else len(s) for s in student]
    t_start = np.cumsum([0, *t_len[:-1]])
    s_start = np.cumsum([0, *s_len[:-1]])
    if band_chars is None:
        lo_idx, hi_idx = np.zeros(n, dtype=np.int64), np.full(n, m, dtype=np.int64)
    else:
        shift = sum(s_len) - sum(t_len)
        lo_idx = np.searchsorted(s_start, t_start + min(0, shift) - band_chars, side="left")
        hi_idx = np.searchsorted(s_start, t_start + max(0, shift) + band_chars, side="right")
    s_space_arr = np.asarray(s_space, dtype=bool)
    for i, t in enumerate(teacher):
        lo, hi = int(lo_idx[i]), int(hi_idx[i])
        if lo < hi:
            cost[i, lo:hi] = [_pair_cost(t, s) for s in student[lo:hi]]
            cost[i, lo:hi] += _WHITESPACE_MISMATCH * (s_space_arr[lo:hi] != t_space[i])
    specials = [j for j, s in enumerate(student) if s == _SPECIAL]
    cost[:, specials] = _FAR
    warp = cost + stretch_cost
    step = np.minimum(warp, gap_cost)  # a warping step pairs only if cheaper than a skip
    total = np.empty((n + 1, m + 1), dtype=np.int64)
    total[0] = np.arange(m + 1) * gap_cost
    for i in range(1, n + 1):
        diagonal = total[i - 1, :-1] + cost[i - 1]
        vertical = total[i - 1, 1:] + step[i - 1]
        best_in = np.minimum(diagonal, vertical)
        first = total[i - 1, 0] + gap_cost
        # total[i, j] = min(best_in[j], total[i, j-1] + step[j]) solved with a prefix sum and cumulative min.
        prefix = np.cumsum(step[i - 1])
        running = np.minimum.accumulate(np.concatenate(([first], best_in - prefix)))
        total[i, 0] = first
        total[i, 1:] = running[1:] + prefix
    pairs: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        here = total[i, j]
        if i > 0 and j > 0 and here == total[i - 1, j - 1] + cost[i - 1, j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and (j == 0 or here == total[i - 1, j] + step[i - 1, j - 1]):
            if j > 0 and warp[i - 1, j - 1] < gap_cost:
                pairs.append((i - 1, j - 1))
            i -= 1
        else:
            if i > 0 and warp[i - 1, j - 1] < gap_cost:
                pairs.append((i - 1, j - 1))
            j -= 1
    pairs.reverse()
    return pairs


def one_to_one(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pairs whose teacher and student tokens pair with nothing else."""
    teacher_count: dict[int, int] = {}
    student_count: dict[int, int] = {}
    for t, s in pairs:
        teacher_count[t] = teacher_count.get(t, 0) + 1
        student_count[s] = student_count.get(s, 0) + 1
    return [(t, s) for t, s in pairs if teacher_count[t] == 1 and student_count[s] == 1]


TOKEN_TYPES = ("number", "word", "punctuation")


def token_type(text: str) -> str:
    """Coverage class of a student token's text: any digit makes a number, else any letter a word,
    else punctuation (symbols, and a lone `▁`)."""
    if any(ch.isdigit() for ch in text):
        return "number"
    if any(ch.isalpha() for ch in text):
        return "word"
    return "punctuation"


@dataclass
class Alignment:
    """A sparse signal for one student target, and how much of it the teacher covers."""

    signal: SparseSignal
    student_ids: list[int]
    # (teacher index, student index) of the positions that carry a distribution (for a span: the
    # span's first teacher token against each of its student tokens).
    pairs: list[tuple[int, int]]
    # Student target tokens that could carry one (specials excluded).
    n_targets: int
    # `token_type` of every student position (None at specials).
    types: list[str | None] = field(default_factory=list)
    # Span alignment only: (teacher indices, student indices) of every covered span.
    spans: list[tuple[list[int], list[int]]] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return len(self.pairs) / self.n_targets if self.n_targets else 0.0

    def by_type(self) -> dict[str, tuple[int, int]]:
        """(covered, targets) per `TOKEN_TYPES` entry."""
        covered_positions = {s for _, s in self.pairs}
        counts = {name: [0, 0] for name in TOKEN_TYPES}
        for position, kind in enumerate(self.types):
            if kind is not None:
                counts[kind][1] += 1
                counts[kind][0] += position in covered_positions
        return {name: (c, n) for name, (c, n) in counts.items()}


class _SameContext:
    """Whether teacher token t and student token s sit at the same place in the text: the
    `CONTEXT_CHARS` normalised characters just before them, or just after them, agree. Rejects an
    equal-string pair the alignment made between different occurrences (the second "7" of "775"
    against the first)."""

    def __init__(self, teacher: Sequence[str], student: Sequence[str]) -> None:
        self.teacher_text = "".join(teacher)
        self.student_text = "".join(student)
        self.teacher_start = np.cumsum([0, *(len(t) for t in teacher)]).tolist()
        self.student_start = np.cumsum([0, *(len(x) for x in student)]).tolist()

    def __call__(self, t: int, s: int) -> bool:
        width = CONTEXT_CHARS
        a, b = self.teacher_start[t], self.student_start[s]
        before = self.teacher_text[max(0, a - width) : a] == self.student_text[max(0, b - width) : b]
        a, b = self.teacher_start[t + 1], self.student_start[s + 1]
        after = self.teacher_text[a : a + width] == self.student_text[b : b + width]
        return before or after


def _word_starts(
    tokens: Sequence[str], own_space: Sequence[bool], ends_in_space: Callable[[str], bool]
) -> list[bool]:
    starts: list[bool] = []
    previous_ends_in_space = True  # the start of the text
    for token, space in zip(tokens, own_space, strict=True):
        starts.append(space or previous_ends_in_space)
        if normalize_token(token) or ends_in_space(token):
            previous_ends_in_space = ends_in_space(token)
    return starts


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a + log(1.0 + exp(b - a)) if b > float("-inf") else a


@dataclass
class _Prepared:
    teacher: TokenLogprobs
    texts: list[str]  # teacher tokens as plain text
    student_text: str
    student_ids: list[int]
    pieces: list[str]
    offsets: list[tuple[int, int]]
    student_norm: list[str]
    types: list[str | None]


class TokenAligner:
    """Aligns teacher completions (`TokenLogprobs`) to one student tokenizer.

    `student_text_fn` rewrites the teacher's text into the student's target text (the same rewrite
    the data pipeline applies, e.g. for characters Flan-T5 cannot represent); identity by default.
    `max_length` truncates the student target as the data pipeline does (EOS kept last).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        student_text_fn: Callable[[str], str] | None = None,
        max_length: int | None = None,
        band_chars: int | None = 32,
        encode_target: TargetEncoder | None = None,
    ) -> None:
        if not tokenizer.is_fast:
            raise ValueError("TokenAligner needs a fast tokenizer (character offsets)")
        self.tokenizer = tokenizer
        self.student_text_fn = student_text_fn or (lambda text: text)
        self.max_length = max_length
        self.band_chars = band_chars
        # How the student tokenizes a target (a causal student: its completion and EOS, `Codec.target_encoding`).
        self.encode_target = encode_target or self._encode_seq2seq_target
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        self.special_ids = set(tokenizer.all_special_ids)
        self.unk_id = tokenizer.unk_token_id
        self._text_of: dict[int, str] = {}
        self._id_of_text: dict[str, int] | None = None
        # The student's word-start marker: sentencepiece's "▁" (T5), or byte-level BPE's "Ġ" (Llama-3,
        # Qwen, SmolLM2), whichever its vocabulary is written in.
        byte_level = sum(piece.startswith("Ġ") for piece in self.vocab)
        self.space = (
            "Ġ" if byte_level > sum(piece.startswith(SPM_SPACE) for piece in self.vocab) else SPM_SPACE
        )

    def _encode_seq2seq_target(
        self, text: str, max_length: int | None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.tokenizer(
            text, return_offsets_mapping=True, truncation=max_length is not None, max_length=max_length
        )
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]

    # -- a teacher with the student's own tokenizer ------------------------------------------------------
    def _token_text(self, token_id: int) -> str:
        text = self._text_of.get(token_id)
        if text is None:
            text = self._text_of[token_id] = self.tokenizer.decode([token_id])
        return text

    def _shared_id(self, text: str) -> int | None:
        """The student id whose text is `text` exactly (None when no one id, or a special one, spells it)."""
        if self._id_of_text is None:
            by_text: dict[str, int] = {}
            ambiguous: set[str] = set()
            for token_id in range(len(self.tokenizer)):
                if token_id in self.special_ids:
                    continue
                piece = self._token_text(token_id)
                if piece in by_text:
                    ambiguous.add(piece)
                by_text[piece] = token_id
            self._id_of_text = {k: v for k, v in by_text.items() if k not in ambiguous}
        return self._id_of_text.get(text)

    def _shared_alignment(self, prepared: _Prepared) -> Alignment | None:
        """Token i of the teacher is token i of the student when both spell the target with the same tokens
        (a teacher that shares the student's tokenizer: SmolLM2 teaching a SmolLM2-shaped student): then
        every position gets the teacher's distribution, its alternatives mapped by their exact text.
        None when the tokenizations differ anywhere (the caller aligns across tokenizers instead)."""
        teacher, texts = prepared.teacher, prepared.texts
        body = [s for s, token_id in enumerate(prepared.student_ids) if token_id not in self.special_ids]
        if not body or body != list(range(len(body))) or len(texts) < len(body):
            return None
        if any(self._token_text(prepared.student_ids[s]) != texts[s] for s in body):
            return None
        has_top = len(teacher.top_tokens) == len(teacher.tokens)
        rows: dict[int, list[Slot]] = {}
        for s in body:
            mass: dict[int, float] = {}
            unshared: list[Slot] = []
            alternatives = zip(teacher.top_tokens[s], teacher.top_logprobs[s], strict=True) if has_top else ()
            sampled = (texts[s], teacher.logprobs[s])
            for text, lp in [sampled, *((teacher_token_text(a), b) for a, b in alternatives)]:
                if lp is None or not lp > float("-inf"):
                    continue
                token_id = prepared.student_ids[s] if text == texts[s] else self._shared_id(text)
                if token_id is None:
                    unshared.append((UNSHARED_ID, float(lp), False))
                elif token_id not in mass or text != texts[s]:
                    # the sampled token's own logprob counts once (it is also among the alternatives)
                    mass[token_id] = max(mass.get(token_id, float("-inf")), float(lp))
            rows[s] = sorted([(i, lp, True) for i, lp in mass.items()] + unshared, key=lambda slot: -slot[1])
        return self._assemble(prepared, rows, [(s, s) for s in body])

    def _student_id(self, text: str, with_space: bool) -> int | None:
        core = text.translate(_MARKER_TABLE).strip()
        if not core or any(ch.isspace() for ch in core):
            return None
        token_id = self.vocab.get(self.space + core if with_space else core)
        if token_id is None or token_id in self.special_ids:
            return None
        return token_id

    def _prepare(self, teacher: TokenLogprobs, student_text: str | None) -> _Prepared:
        """The (bounded) teacher tokens as text, and the student target they align to."""
        if len(teacher.tokens) > MAX_TEACHER_TOKENS:  # far beyond any student target; the tail cannot align
            cut = MAX_TEACHER_TOKENS
            teacher = TokenLogprobs(
                tokens=teacher.tokens[:cut],
                logprobs=teacher.logprobs[:cut],
                top_tokens=teacher.top_tokens[:cut],
                top_logprobs=teacher.top_logprobs[:cut],
            )
        texts = [teacher_token_text(t) for t in teacher.tokens]
        if student_text is None:
            student_text = self.student_text_fn("".join(texts))
        student_ids, offsets = self.encode_target(student_text, self.max_length)
        pieces = self.tokenizer.convert_ids_to_tokens(student_ids)
        student_norm: list[str] = []
        types: list[str | None] = []
        for token_id, piece, (start, end) in zip(student_ids, pieces, offsets, strict=True):
            if token_id == self.unk_id:
                student_norm.append(normalize_token(student_text[start:end]))  # what the <unk> stands for
            elif token_id in self.special_ids:
                student_norm.append(_SPECIAL)
            else:
                student_norm.append(normalize_token(piece))
            types.append(None if token_id in self.special_ids else token_type(student_norm[-1]))
        return _Prepared(teacher, texts, student_text, student_ids, pieces, offsets, student_norm, types)

    def _assemble(
        self,
        prepared: _Prepared,
        rows: dict[int, list[Slot]],
        pairs: list[tuple[int, int]],
        spans: list[tuple[list[int], list[int]]] | None = None,
    ) -> Alignment:
        student_ids = prepared.student_ids
        length = len(student_ids)
        width = max((len(d) for d in rows.values()), default=1)
        ids = torch.full((length, width), -1, dtype=torch.int32)
        logprobs = torch.full((length, width), float("-inf"), dtype=torch.float32)
        mask = torch.zeros(length, dtype=torch.bool)
        in_vocab = torch.zeros((length, width), dtype=torch.bool)
        for s, dist in rows.items():
            ids[s, : len(dist)] = torch.tensor([d[0] for d in dist], dtype=torch.int32)
            logprobs[s, : len(dist)] = torch.tensor([d[1] for d in dist], dtype=torch.float32)
            in_vocab[s, : len(dist)] = torch.tensor([d[2] for d in dist], dtype=torch.bool)
            mask[s] = True
        signal = SparseSignal(
            ids=ids,
            logprobs=logprobs,
            mask=mask,
            target_ids=torch.tensor(student_ids, dtype=torch.int32),
            in_vocab=in_vocab,
        )
        n_targets = sum(1 for i in student_ids if i not in self.special_ids)
        return Alignment(
            signal=signal,
            student_ids=student_ids,
            pairs=pairs,
            n_targets=n_targets,
            types=prepared.types,
            spans=spans or [],
        )

    def align(self, teacher: TokenLogprobs, student_text: str | None = None) -> Alignment:
        """Sparse signal over the student tokens of `student_text` (default: the rewritten teacher text)."""
        prepared = self._prepare(teacher, student_text)
        if (shared := self._shared_alignment(prepared)) is not None:
            return shared
        teacher, texts = prepared.teacher, prepared.texts
        student_ids, pieces, student_norm = prepared.student_ids, prepared.pieces, prepared.student_norm
        student_space = [p.startswith(self.space) for p in pieces]
        teacher_space = [starts_with_space(t) for t in texts]
        teacher_norm = [normalize_token(t) for t in texts]
        # Whether a token begins a word: its own leading space, a whitespace-only token before it
        # (byte-level BPE writes " 4" as "Ġ" + "4"; sentencepiece writes "▁" + "<unk>"), a teacher
        # newline (the student sees a space), or the start of the text.
        teacher_boundary = _word_starts(texts, teacher_space, lambda x: x[-1:].isspace())
        student_boundary = _word_starts(pieces, student_space, lambda x: x == self.space)
        pairs = dtw_align(
            teacher_norm,
            student_norm,
            teacher_space=teacher_boundary,
            student_space=student_boundary,
            band_chars=self.band_chars,
        )
        in_place = _SameContext(teacher_norm, [x if x != _SPECIAL else "" for x in student_norm])
        has_top = len(teacher.top_tokens) == len(teacher.tokens)
        rows: dict[int, list[Slot]] = {}
        kept: list[tuple[int, int]] = []
        for t, s in one_to_one(pairs):
            target = student_ids[s]
            if (
                not has_top
                or target in self.special_ids
                or not student_norm[s]
                or student_norm[s] != teacher_norm[t]
                or student_boundary[s] != teacher_boundary[t]
                or not in_place(t, s)
            ):
                continue
            dist = self._distribution(teacher, texts, t, target, student_space[s], teacher_space[t])
            rows[s] = dist
            kept.append((t, s))
        return self._assemble(prepared, rows, kept)

    def _distribution(
        self,
        teacher: TokenLogprobs,
        texts: list[str],
        t: int,
        target: int,
        student_space: bool,
        teacher_space: bool,
        span_logprob: float | None = None,
    ) -> list[Slot]:
        """Student ids, teacher logprobs and whether the id is the teacher token's own (shared) at one
        matched position, most likely first; an alternative no student token spells is an unshared
        slot of its own.

        `span_logprob` (span alignment) replaces the sampled token's own logprob: the target then
        stands for the whole span that starts with teacher token `t`.
        """
        by_text: dict[str, float] = {}
        for alt, lp in zip(teacher.top_tokens[t], teacher.top_logprobs[t], strict=True):
            text = teacher_token_text(alt)
            if lp is not None and lp > float("-inf"):
                by_text[text] = max(by_text.get(text, float("-inf")), float(lp))
        sampled = texts[t]
        if span_logprob is not None:
            by_text[sampled] = span_logprob
        elif teacher.logprobs[t] is not None:
            by_text[sampled] = max(by_text.get(sampled, float("-inf")), float(teacher.logprobs[t]))
        mass: dict[int, float] = {}
        unshared: list[Slot] = []
        for text, lp in by_text.items():
            if not lp > float("-inf"):
                continue
            if text == sampled:
                token_id: int | None = target  # the matched pair: same text, same token
            else:
                # An alternative with the sampled token's leading-space status takes the student
                # position's status (a teacher newline became a student space); one that differs
                # brings its own space or lack of it.
                alt_space = starts_with_space(text)
                token_id = self._student_id(text, student_space if alt_space == teacher_space else alt_space)
            if token_id is None:
                unshared.append((UNSHARED_ID, lp, False))
                continue
            mass[token_id] = _logaddexp(mass.get(token_id, float("-inf")), lp)
        slots = [(token_id, lp, True) for token_id, lp in mass.items()] + unshared
        return sorted(slots, key=lambda slot: -slot[1])


class SpanAligner(TokenAligner):
    """Aligns teacher and student tokens by their character offsets in the same text.

    Both token sequences are laid over the text's non-whitespace characters (whitespace is where
    the tokenizers differ most: `Ġ` tokens, `▁` prefixes); the teacher keeps its newlines, which the
    student's rewrite turns into sentence breaks. When the student text is a rewrite of the
    teacher's (`student_text_fn`: calculator notes dropped, newlines turned into `. `, `#### 72`
    into "The answer is 72."), the two character streams are matched by `difflib` (calculator notes
    the rewrite drops left out first), and what lies between two matched blocks is, per side:
    * teacher only (a dropped note, a dropped newline): teacher tokens made only of it carry no
      student text; inside a span they are left out of its product (the span's tokens are then
      conditioned on the dropped text the teacher wrote before them);
    * student only (the `.` the rewrite closes a line or an answer with): a span may hold it as
      certain text; a student token made only of it joins the span before it if it is punctuation,
      else it has no teacher and stays uncovered (an answer sentence the formatter appended);
    * both (a rewrite: `\n####` -> "The answer is", a newline -> `.`, `{` -> `(`): one unit that a
      span holds whole; the rewrite is a function of the teacher's text, so the teacher's
      probability of what it wrote is the probability of its rewrite.
    A `<unk>` covers the characters it replaced (its offsets) but is never in a kept span.

    Tokens are grouped into the smallest spans whose boundaries coincide on both sides: one student
    token over several teacher tokens (`▁48` <- `Ġ`,`4`,`8`), several student tokens under one
    teacher token, or a crossing (`▁Nat`,`alia` <- `N`,`atal`,`ia`). Whitespace-only teacher tokens
    (`Ġ`, a dropped `Ċ`) and a lone student `▁` belong to the span that follows them, except that a
    lone `▁` facing teacher whitespace tokens is a span with them (tokenizers that agree give the
    identity alignment).

    What each student position of a kept span receives (the chain rule over the span):
    * the first student position: the target with the teacher's logprob of the whole span (the sum
      of its teacher tokens' logprobs, whitespace tokens included), plus the alternatives of the
      span's first teacher position, each mapped to the student token spelled like it (with `▁`
      as in `TokenAligner`); alternatives that no student token spells are unshared slots.
    * every later student position of the span: its target with logprob 0 (probability 1).
    The product over the span's student positions is thus exactly the teacher's probability of the
    span. Approximations: an alternative's probability also holds its own continuations (`Ġ5` may
    go on to `Ġ5`,`0`), so it stands for the shortest student token starting with it; and the
    teacher's alternatives inside a span (after `4`: `5` instead of `8`) are not seen. Tail mass:
    nothing is renormalised; what the shared ids leave (the unshared alternatives, and the prefix
    mass `p(first token) - p(span)` of continuations other than the sampled one) is the top-k's
    missing mass, which `tail: bucket` keeps as one outcome.
    """

    def align(self, teacher: TokenLogprobs, student_text: str | None = None) -> Alignment:
        """Sparse signal over the student tokens of `student_text` (default: the rewritten teacher text)."""
        prepared = self._prepare(teacher, student_text)
        if (shared := self._shared_alignment(prepared)) is not None:
            return shared
        teacher, texts = prepared.teacher, prepared.texts
        if len(teacher.top_tokens) != len(teacher.tokens):  # no top-k: nothing to carry
            return self._assemble(prepared, {}, [])
        # Teacher tokens over the teacher's characters without spaces (newlines kept): [start, end).
        teacher_chars: list[str] = []
        teacher_range: list[tuple[int, int]] = []
        for text in texts:
            start = len(teacher_chars)
            teacher_chars.extend(ch for ch in text if ch == "\n" or not ch.isspace())
            teacher_range.append((start, len(teacher_chars)))
        teacher_stream = "".join(teacher_chars)
        # Student tokens over the student text's non-whitespace characters, as far as the (possibly
        # truncated) student target reaches.
        student_text = prepared.student_text[: max((end for _, end in prepared.offsets), default=0)]
        before = np.cumsum([0, *(not ch.isspace() for ch in student_text)]).tolist()
        student_stream = "".join(ch for ch in student_text if not ch.isspace())
        student_range: list[tuple[int, int] | None] = []  # None: a special token, never in a span
        for token_id, piece, (start, end) in zip(
            prepared.student_ids, prepared.pieces, prepared.offsets, strict=True
        ):
            if token_id in self.special_ids:
                student_range.append(None)
            elif piece == self.space:  # its offsets repeat the next token's first character
                student_range.append((before[start], before[start]))
            else:
                student_range.append((before[start], before[end]))
        # The dropped notes, from teacher-text offsets to teacher-stream positions.
        stream_before = np.cumsum([0, *(ch == "\n" or not ch.isspace() for ch in "".join(texts))]).tolist()
        notes = [
            (stream_before[a], stream_before[b])
            for a, b in _CharMap.dropped_notes("".join(texts), student_text)
        ]
        charmap = _CharMap(student_stream, teacher_stream, notes)
        starting_at = {a: i for i, (a, b) in enumerate(teacher_range) if b > a}
        ending_at = {b: i for i, (a, b) in enumerate(teacher_range) if b > a}
        whitespace = [not t.strip() for t in texts]
        dropped = [b == a or charmap.teacher_only(a, b) for a, b in teacher_range]

        rows: dict[int, list[Slot]] = {}
        pairs: list[tuple[int, int]] = []
        spans: list[tuple[list[int], list[int]]] = []
        n_student = len(prepared.student_ids)
        j = 0
        while j < n_student:
            first_range = student_range[j]
            teacher_start = charmap.start(first_range[0]) if first_range is not None else None
            if teacher_start not in starting_at or charmap.student_only(*first_range):  # type: ignore[misc]
                j += 1
                continue
            end, teacher_end = j, None
            while end < n_student and (last_range := student_range[end]) is not None:
                teacher_end = charmap.end(last_range[1])
                if teacher_end is not None and teacher_end > teacher_start and teacher_end in ending_at:
                    break
                end += 1
            if end == n_student or student_range[end] is None or teacher_end is None:
                j = end + 1
                continue
            span_students = list(range(j, end + 1))
            j = end + 1
            while (
                j < n_student
                and (next_range := student_range[j]) is not None
                and token_type(prepared.student_norm[j]) == "punctuation"
                and charmap.student_only(*next_range)
            ):
                span_students.append(j)  # the sentence break the rewrite inserted after the span
                j += 1
            t_first, t_last = starting_at[teacher_start], ending_at[teacher_end]
            while t_first > 0 and whitespace[t_first - 1] and dropped[t_first - 1]:
                t_first -= 1  # the spaces and dropped newlines before the span's text
            span_teacher = [t for t in range(t_first, t_last + 1) if whitespace[t] or not dropped[t]]
            token_logprobs = [teacher.logprobs[t] for t in span_teacher]
            if any(lp is None or not lp > float("-inf") for lp in token_logprobs):
                continue
            lead = 0
            while lead < len(span_teacher) - 1 and whitespace[span_teacher[lead]]:
                lead += 1
            if lead and len(span_students) > 1 and prepared.pieces[span_students[0]] == self.space:
                # A lone `▁` against the teacher's own whitespace tokens is a span of its own (the
                # same split a tokenizer shared by both sides makes).
                parts = [(span_teacher[:lead], span_students[:1]), (span_teacher[lead:], span_students[1:])]
            else:
                parts = [(span_teacher, span_students)]
            for part_teacher, part_students in parts:
                logprob = float(sum(teacher.logprobs[t] for t in part_teacher))  # type: ignore[misc]
                self._carry(prepared, part_teacher, part_students, logprob, rows)
                pairs.extend((part_teacher[0], x) for x in part_students)
                spans.append((part_teacher, part_students))
        return self._assemble(prepared, rows, pairs, spans)

    def _carry(
        self,
        prepared: _Prepared,
        span_teacher: list[int],
        span_students: list[int],
        span_logprob: float,
        rows: dict[int, list[Slot]],
    ) -> None:
        first, *rest = span_students
        t = span_teacher[0]
        target = prepared.student_ids[first]
        student_space = prepared.pieces[first].startswith(self.space)
        teacher_space = starts_with_space(prepared.texts[t])
        rows[first] = self._distribution(
            prepared.teacher, prepared.texts, t, target, student_space, teacher_space, span_logprob
        )
        for s in rest:
            rows[s] = [(prepared.student_ids[s], 0.0, True)]


class Fu2023Aligner(TokenAligner):
    """Fu et al. (2023)'s alignment of a teacher's tokens to Flan-T5's, as their code computes it.

    From the authors' repository (FranxYao/FlanT5-CoT-Specialization):
    `notebooks/dev_align_codex_to_flan_t5_dtw.ipynb@d4911c8`, cells `7931d279` (the cost) and
    `35d0b79f` (`transform_step_probs`), with `dtw` of `src/utils.py@65fbc2a:649-692`:
    * the teacher tokens are the completion's, trimmed to the text the student target holds: they
      drop the two tokens that continue their prompt (`' step'`, `'\\n'`) and the two closing
      newlines (`steps[2:-2]`); mwp's rationale is the completion stripped, so here the
      whitespace-only tokens at either end are dropped;
    * the student tokens are the target's pieces without its end-of-sequence token;
    * classic DTW over the full matrix (no band, no skips), steps (1,0), (0,1), (1,1) each costing
      the edit distance between the teacher token without its spaces and the student piece without
      `▁` (`fu2023_cost`); the path is traced back from the last cell, taking the first minimum of
      diagonal, up (teacher), left (student) (`fu2023_dtw`);
    * a student position carries the teacher's distribution only when its path pairs it with exactly
      one teacher token and that token, spaces written `▁`, is the student's piece; the distribution
      is the sampled token and then the reported alternatives, each written with `▁` for spaces and
      kept if the student's vocabulary has that exact piece, the first occurrence of a piece winning;
      nothing is renormalised, merged or kept as an unshared slot. Every other position (and the
      end-of-sequence token) has no distribution: `LossTerm.unaligned: one_hot` trains it against
      a one-hot teacher at the label, as their `{flan_token: 1.0}` does.

    The target is aligned whole and truncated after (`max_length`), so truncation cannot move the
    path. Teacher output is untrusted: a row whose table would exceed `FU2023_MAX_CELLS` gets no
    distribution (a warning says so). Their boundary check (a sample whose stream does not start `' step'`, `'\\n'` is dropped)
    belongs to their prompt layout and has no counterpart here.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        student_text_fn: Callable[[str], str] | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__(tokenizer, student_text_fn=student_text_fn, max_length=max_length)
        if not any(piece.startswith(SPM_SPACE) for piece in self.vocab):
            raise ValueError(
                "loss.signal.alignment=fu2023 compares SentencePiece pieces (a space written '▁'), as "
                "Fu et al. aligned to Flan-T5; this student tokenizer has none: use span or dtw"
            )

    def align(self, teacher: TokenLogprobs, student_text: str | None = None) -> Alignment:
        """Sparse signal over the student tokens of `student_text` (default: the rewritten teacher text)."""
        tokens = teacher.tokens[:MAX_TEACHER_TOKENS]
        texts = [teacher_token_text(t) for t in tokens]
        if student_text is None:
            student_text = self.student_text_fn("".join(texts))
        full_ids: list[int] = self.tokenizer(student_text)["input_ids"]
        student_ids = full_ids
        if self.max_length is not None and len(full_ids) > self.max_length:
            student_ids = self.tokenizer(student_text, truncation=True, max_length=self.max_length)[
                "input_ids"
            ]
        end = len(full_ids) - 1 if full_ids and full_ids[-1] == self.tokenizer.eos_token_id else len(full_ids)
        pieces = self.tokenizer.convert_ids_to_tokens(full_ids[:end])
        first, last = 0, len(texts)
        while first < last and not texts[first].strip():
            first += 1
        while last > first and not texts[last - 1].strip():
            last -= 1
        # Positions the (possibly truncated) target shares with the whole one.
        shared = 0
        while shared < min(end, len(student_ids)) and student_ids[shared] == full_ids[shared]:
            shared += 1
        rows: dict[int, list[Slot]] = {}
        pairs: list[tuple[int, int]] = []
        if (last - first) * len(pieces) > FU2023_MAX_CELLS:
            logger.warning(
                "fu2023 alignment: %d teacher x %d student tokens exceed its %d-cell table; the row "
                "gets no teacher distribution",
                last - first,
                len(pieces),
                FU2023_MAX_CELLS,
            )
        elif first < last and pieces:
            codex = texts[first:last]
            cost = _fu2023_costs(codex, pieces)
            for s, mapped in enumerate(fu2023_dtw(cost)[:shared]):
                if len(mapped) != 1 or codex[mapped[0]].replace(" ", SPM_SPACE) != pieces[s]:
                    continue
                t = first + mapped[0]
                rows[s] = self._fu2023_distribution(teacher, t, texts[t])
                pairs.append((t, s))
        types = [
            None if i in self.special_ids else token_type(normalize_token(piece))
            for i, piece in zip(student_ids, self.tokenizer.convert_ids_to_tokens(student_ids), strict=True)
        ]
        prepared = _Prepared(teacher, texts, student_text, student_ids, [], [], [], types)
        return self._assemble(prepared, rows, pairs)

    def _fu2023_distribution(self, teacher: TokenLogprobs, t: int, sampled: str) -> list[Slot]:
        records: list[tuple[str, float | None]] = [(sampled, teacher.logprobs[t])]
        if len(teacher.top_tokens) == len(teacher.tokens):
            records += [
                (teacher_token_text(alt), lp)
                for alt, lp in zip(teacher.top_tokens[t], teacher.top_logprobs[t], strict=True)
            ]
        slots: dict[int, float] = {}
        for text, lp in records:
            token_id = self.vocab.get(text.replace(" ", SPM_SPACE))
            if token_id is None or token_id in slots or lp is None:
                continue
            slots[token_id] = float(lp)
        return [(token_id, lp, True) for token_id, lp in slots.items()]


@lru_cache(maxsize=1 << 17)
def _edit_distance(a: str, b: str) -> int:
    if a == b:
        return 0
    if not a or not b:
        return len(a) + len(b)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def fu2023_cost(teacher_token: str, student_piece: str) -> int:
    """Fu et al.'s DTW cost: the edit distance between the teacher token without its spaces and the
    student piece without `▁` (newlines and other whitespace stay and cost like any character)."""
    return _edit_distance(teacher_token.replace(" ", ""), student_piece.replace(SPM_SPACE, ""))


def _fu2023_costs(teacher: Sequence[str], student: Sequence[str]) -> np.ndarray:
    teacher_kinds = {t: i for i, t in enumerate(dict.fromkeys(teacher))}
    student_kinds = {s: j for j, s in enumerate(dict.fromkeys(student))}
    distinct = np.array(
        [[fu2023_cost(t, s) for s in student_kinds] for t in teacher_kinds], dtype=np.int64
    ).reshape(len(teacher_kinds), len(student_kinds))
    rows = np.array([teacher_kinds[t] for t in teacher])
    columns = np.array([student_kinds[s] for s in student])
    return distinct[np.ix_(rows, columns)]


def fu2023_dtw(cost: np.ndarray) -> list[list[int]]:
    """Classic DTW over a `[teacher, student]` cost matrix as Fu et al.'s `dtw` computes it: for each
    student index, the teacher indices its path pairs it with, ascending.

    Cell (i, j) costs `cost[i, j]` plus the cheapest of (i-1, j), (i, j-1), (i-1, j-1), from 0 before
    (0, 0). The path is traced back from the last cell: while i > 0 or j > 0, the cell is recorded
    and the step goes to the first minimum of diagonal, up (i-1), left (j-1); (0, 0) is recorded last.
    Costs are integers, so the vectorised recursion gives their floating-point cells exactly.
    """
    n, m = cost.shape
    unreachable = np.int64(1) << 60
    total = np.empty((n, m), dtype=np.int64)
    above = np.full(m + 1, unreachable, dtype=np.int64)  # the row before, with its column -1
    above[0] = 0
    for i in range(n):
        row = cost[i]
        entry = np.minimum(above[1:], above[:-1])  # from (i-1, j) or (i-1, j-1)
        prefix = np.cumsum(row)
        # cell j = row[j] + min(entry[j], cell j-1) = prefix[j] + min over k <= j of (entry[k] + row[k] - prefix[k])
        total[i] = prefix + np.minimum.accumulate(entry + row - prefix)
        above[1:] = total[i]
        above[0] = unreachable
    cells = total.tolist()
    mapped: list[list[int]] = [[] for _ in range(m)]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        mapped[j].append(i)
        diagonal = cells[i - 1][j - 1] if i > 0 and j > 0 else None
        up = cells[i - 1][j] if i > 0 else None
        left = cells[i][j - 1] if j > 0 else None
        options = [x for x in (diagonal, up, left) if x is not None]
        best = min(options)
        if diagonal == best:
            i, j = i - 1, j - 1
        elif up == best:
            i -= 1
        else:
            j -= 1
    mapped[0].append(0)
    return [sorted(indices) for indices in mapped]


class _CharMap:
    """Where the boundaries of the student's character stream fall in the teacher's.

    `start(c)` / `end(c)`: the teacher position a span starting / ending at student position c
    starts / ends at (they differ where teacher-only text lies at c); None strictly inside a
    rewrite unit. Text only one side has maps to the point where it was inserted or dropped.
    """

    def __init__(self, student: str, teacher: str, dropped: Sequence[tuple[int, int]] = ()) -> None:
        n = len(student)
        if student == teacher:
            self._starts: list[int | None] = list(range(n + 1))
            self._ends: list[int | None] = list(range(n + 1))
            self._student_only = [False] * n
            self._teacher_kept = np.arange(n + 1)  # prefix count of teacher characters the student has
            return
        self._starts = [None] * (n + 1)
        self._ends = [None] * (n + 1)
        self._student_only = [False] * n
        kept = np.zeros(len(teacher), dtype=np.int64)
        blocks = _matching_blocks(student, teacher, dropped)
        a_prev = b_prev = 0
        for a, b, size in [*blocks, (n, len(teacher), 0)]:
            # The gap before this block: student [a_prev, a), teacher [b_prev, b).
            if a == a_prev:  # teacher only (or nothing): a span ending here ends before it
                self._ends[a] = b_prev
            elif b == b_prev:  # student only: all of it sits at teacher position b
                self._starts[a_prev : a + 1] = [b] * (a + 1 - a_prev)
                self._ends[a_prev : a + 1] = [b] * (a + 1 - a_prev)
                self._student_only[a_prev:a] = [True] * (a - a_prev)
            else:  # a rewrite unit: only its edges map
                if self._starts[a_prev] is None:
                    self._starts[a_prev] = b_prev
                self._ends[a] = b
                kept[b_prev:b] = 1
            self._starts[a : a + size + 1] = range(b, b + size + 1)
            self._ends[a + 1 : a + size + 1] = range(b + 1, b + size + 1)
            kept[b : b + size] = 1
            a_prev, b_prev = a + size, b + size
        self._teacher_kept = np.concatenate(([0], np.cumsum(kept)))

    def start(self, c: int) -> int | None:
        return self._starts[c]

    @staticmethod
    def dropped_notes(teacher_text: str, student_text: str) -> list[tuple[int, int]]:
        """Character ranges of `teacher_text` the student rewrite drops for certain: GSM8K calculator
        notes (`<<48/2=24>>`, `mwp.data.text`), unless the student text kept them."""
        if "<<" in student_text:
            return []
        return [m.span() for m in CALCULATOR_NOTE.finditer(teacher_text)]

    def end(self, c: int) -> int | None:
        return self._ends[c]

    def student_only(self, a: int, b: int) -> bool:
        """Whether student characters [a, b) are all text the teacher does not have."""
        return b > a and all(self._student_only[a:b])

    def teacher_only(self, a: int, b: int) -> bool:
        """Whether teacher characters [a, b) are all text the student does not have."""
        return int(self._teacher_kept[b] - self._teacher_kept[a]) == 0


ALIGNMENTS = ("dtw", "span", "fu2023")


def _matching_blocks(
    student: str, teacher: str, dropped: Sequence[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """`difflib` matching blocks (student start, teacher start, size) of the two streams, with the
    teacher's `dropped` ranges left out of the matching: a note `16=<<2*8=16>>16` repeats the result,
    and the student's `16` is the copy after it."""
    keep = np.ones(len(teacher), dtype=bool)
    for start, end in dropped:
        keep[start:end] = False
    kept_positions = np.flatnonzero(keep)
    # Teacher text is untrusted: text far beyond what the student target holds cannot align, and
    # difflib's exact matching is quadratic on repetitive text, so large inputs use its heuristic.
    kept_positions = kept_positions[: MATCH_LENGTH_RATIO * len(student) + MATCH_SLACK_CHARS]
    reduced = "".join(teacher[i] for i in kept_positions)
    exact = len(student) * len(reduced) <= MAX_EXACT_MATCH_CELLS
    matcher = difflib.SequenceMatcher(None, student, reduced, autojunk=not exact)
    blocks: list[tuple[int, int, int]] = []
    for a, b, size in matcher.get_matching_blocks():
        # A block of the reduced stream may run across a dropped range: split it there.
        while size:
            positions = kept_positions[b : b + size]
            breaks = np.flatnonzero(np.diff(positions) != 1)
            run = int(breaks[0]) + 1 if len(breaks) else size
            blocks.append((a, int(positions[0]), run))
            a, b, size = a + run, b + run, size - run
    return blocks


def make_aligner(
    method: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    student_text_fn: Callable[[str], str] | None = None,
    max_length: int | None = None,
    encode_target: TargetEncoder | None = None,
) -> TokenAligner:
    """The aligner of `loss.signal.alignment`: `span` (`SpanAligner`), `dtw` (`TokenAligner`) or
    `fu2023` (`Fu2023Aligner`). `span` and `dtw` align a teacher that shares the student's tokenizer
    token by token (`TokenAligner._shared_alignment`) and only otherwise across tokenizers.
    `encode_target` is how the student tokenizes a target (default: a T5's, EOS appended)."""
    if method not in ALIGNMENTS:
        raise ValueError(f"loss.signal.alignment must be one of {ALIGNMENTS}, got {method!r}")
    cls = {"span": SpanAligner, "dtw": TokenAligner, "fu2023": Fu2023Aligner}[method]
    if cls is Fu2023Aligner:
        return cls(tokenizer, student_text_fn=student_text_fn, max_length=max_length)
    return cls(tokenizer, student_text_fn=student_text_fn, max_length=max_length, encode_target=encode_target)
