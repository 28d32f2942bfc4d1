"""Carry a teacher's per-token top-k distribution over to the student's tokenization.

Fu et al. (2023) distil a teacher whose tokenizer differs from the student's: the two token
sequences of the same text are aligned by dynamic time warping (DTW) over token strings, and where
a student token corresponds to exactly one teacher token with the same text, the teacher's top-k
alternatives at that token are looked up in the student vocabulary. Every other student position
trains on plain cross-entropy (mask False).

Choices:
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
  alternative begins a word at that position; an alternative no single student token spells is
  dropped (its probability becomes part of the teacher's missing mass). The sampled token is
  always included with its own logprob.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import exp, log

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mwp.signals.types import SparseSignal
from mwp.teachers.base import TokenLogprobs

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


@dataclass
class Alignment:
    """A sparse signal for one student target, and how much of it the teacher covers."""

    signal: SparseSignal
    student_ids: list[int]
    # (teacher index, student index) of the positions that carry a distribution.
    pairs: list[tuple[int, int]]
    # Student target tokens that could carry one (specials excluded).
    n_targets: int

    @property
    def coverage(self) -> float:
        return len(self.pairs) / self.n_targets if self.n_targets else 0.0


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
    ) -> None:
        if not tokenizer.is_fast:
            raise ValueError("TokenAligner needs a fast tokenizer (character offsets)")
        self.tokenizer = tokenizer
        self.student_text_fn = student_text_fn or (lambda text: text)
        self.max_length = max_length
        self.band_chars = band_chars
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        self.special_ids = set(tokenizer.all_special_ids)
        self.unk_id = tokenizer.unk_token_id

    def _student_id(self, text: str, with_space: bool) -> int | None:
        core = text.translate(_MARKER_TABLE).strip()
        if not core or any(ch.isspace() for ch in core):
            return None
        token_id = self.vocab.get(SPM_SPACE + core if with_space else core)
        if token_id is None or token_id in self.special_ids:
            return None
        return token_id

    def align(self, teacher: TokenLogprobs, student_text: str | None = None) -> Alignment:
        """Sparse signal over the student tokens of `student_text` (default: the rewritten teacher text)."""
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
        encoded = self.tokenizer(
            student_text,
            return_offsets_mapping=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
        )
        student_ids: list[int] = encoded["input_ids"]
        pieces = self.tokenizer.convert_ids_to_tokens(student_ids)
        student_norm: list[str] = []
        for token_id, piece, (start, end) in zip(student_ids, pieces, encoded["offset_mapping"], strict=True):
            if token_id == self.unk_id:
                student_norm.append(normalize_token(student_text[start:end]))  # what the <unk> stands for
            elif token_id in self.special_ids:
                student_norm.append(_SPECIAL)
            else:
                student_norm.append(normalize_token(piece))
        student_space = [p.startswith(SPM_SPACE) for p in pieces]
        teacher_space = [starts_with_space(t) for t in texts]
        teacher_norm = [normalize_token(t) for t in texts]
        # Whether a token begins a word: its own leading space, a whitespace-only token before it
        # (byte-level BPE writes " 4" as "Ġ" + "4"; sentencepiece writes "▁" + "<unk>"), a teacher
        # newline (the student sees a space), or the start of the text.
        teacher_boundary = _word_starts(texts, teacher_space, lambda x: x[-1:].isspace())
        student_boundary = _word_starts(pieces, student_space, lambda x: x == SPM_SPACE)
        pairs = dtw_align(
            teacher_norm,
            student_norm,
            teacher_space=teacher_boundary,
            student_space=student_boundary,
            band_chars=self.band_chars,
        )
        in_place = _SameContext(teacher_norm, [x if x != _SPECIAL else "" for x in student_norm])
        has_top = len(teacher.top_tokens) == len(teacher.tokens)
        rows: dict[int, list[tuple[int, float]]] = {}
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
        length = len(student_ids)
        width = max((len(d) for d in rows.values()), default=1)
        ids = torch.full((length, width), -1, dtype=torch.int32)
        logprobs = torch.full((length, width), float("-inf"), dtype=torch.float32)
        mask = torch.zeros(length, dtype=torch.bool)
        for s, dist in rows.items():
            ids[s, : len(dist)] = torch.tensor([d[0] for d in dist], dtype=torch.int32)
            logprobs[s, : len(dist)] = torch.tensor([d[1] for d in dist], dtype=torch.float32)
            mask[s] = True
        signal = SparseSignal(
            ids=ids, logprobs=logprobs, mask=mask, target_ids=torch.tensor(student_ids, dtype=torch.int32)
        )
        n_targets = sum(1 for i in student_ids if i not in self.special_ids)
        return Alignment(signal=signal, student_ids=student_ids, pairs=kept, n_targets=n_targets)

    def _distribution(
        self,
        teacher: TokenLogprobs,
        texts: list[str],
        t: int,
        target: int,
        student_space: bool,
        teacher_space: bool,
    ) -> list[tuple[int, float]]:
        """Student ids and teacher logprobs at one matched position, most likely first."""
        by_text: dict[str, float] = {}
        for alt, lp in zip(teacher.top_tokens[t], teacher.top_logprobs[t], strict=True):
            text = teacher_token_text(alt)
            if lp is not None and lp > float("-inf"):
                by_text[text] = max(by_text.get(text, float("-inf")), float(lp))
        sampled = texts[t]
        if teacher.logprobs[t] is not None:
            by_text[sampled] = max(by_text.get(sampled, float("-inf")), float(teacher.logprobs[t]))
        mass: dict[int, float] = {}
        for text, lp in by_text.items():
            if text == sampled:
                token_id: int | None = target  # the matched pair: same text, same token
            else:
                # An alternative with the sampled token's leading-space status takes the student
                # position's status (a teacher newline became a student space); one that differs
                # brings its own space or lack of it.
                alt_space = starts_with_space(text)
                token_id = self._student_id(text, student_space if alt_space == teacher_space else alt_space)
            if token_id is None or not lp > float("-inf"):
                continue
            mass[token_id] = _logaddexp(mass.get(token_id, float("-inf")), lp)
        return sorted(mass.items(), key=lambda item: -item[1])
