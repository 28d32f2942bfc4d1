"""Token-level training losses as pure tensor functions: cross-entropy and teacher-matching divergences.

Student logits are `[B, L, V]`. A teacher (`mwp.signals.TeacherSignal`) is either dense
(`teacher_logits [B, L, V]`, same vocabulary) or sparse (`mwp.signals.SparseBatch`: `ids [B, L, k]`,
`logprobs [B, L, k]`, `mask [B, L]`, from `mwp.signals.collate_sparse`). Sparse targets are never
expanded to `[B, L, V]`: the student's log-probabilities are gathered at the k ids, and its
remaining mass is one number. Which positions a term counts is `mwp.signals.supervised_positions`.

The teacher's missing mass (a top-k sums to less than 1) is an explicit choice, `tail`:
* `"bucket"`: outcomes are the k ids plus one "rest" bucket; teacher rest = 1 - sum(p), student
  rest = 1 - sum(q at the ids). A coarsening of both distributions, so every divergence is a lower
  bound of the full-vocabulary one. Needs temperature 1 (the tempered tail mass is unknown).
* `"renormalize"`: the teacher's top-k is renormalised and taken as its whole distribution (rest 0).
  Forward KL is then cross-entropy against the renormalised top-k; reverse KL and JSD also push the
  student's mass outside the top-k towards zero (in reverse KL a zero-probability teacher outcome
  counts as `TAIL_LOGPROB_FLOOR`, so the loss stays finite).
* `"none"`: the top-k as reported (not renormalised, no rest outcome), forward KL only:
  sum_i p_i (log p_i - log q_i) over the k ids, Fu et al.'s (2023) distribution matching.

Forward/reverse KL and JSD compare distributions over student ids, so a sparse teacher's unshared
slots (`SparseBatch.in_vocab` False: teacher tokens the student's vocabulary lacks) are part of its
missing mass there (`SparseBatch.shared_only`).

Tokenizer-free terms (no vocabulary mapping needed, `uld_loss` / `hybrid_loss`):
* `uld` - Boizard et al. (2024), universal logit distillation: per position, the closed-form
  Wasserstein-1 distance between teacher and student distributions under a uniform transport cost,
  sum_i |p_(i) - q_(i)| over both probability vectors sorted in descending order, the shorter padded
  with zeros (range [0, 2]). A dense teacher's whole vocabulary (of any size) is sorted; a sparse
  teacher's top-k (shared and unshared slots alike) is compared with the student's top-k (same k). `tail='renormalize'` rescales both
  top-k's to sum to 1; otherwise the raw probabilities are compared (the unseen tail is not a slot).
* `hybrid` - GOLD-style: per supervised position, forward KL on the tokens the two vocabularies share
  plus ULD on the rest. Shared = the sparse slots with `SparseBatch.in_vocab` True (every valid slot
  when the batch has no `in_vocab`): KL over those ids plus one rest outcome (the `bucket`
  coarsening). The teacher's unshared slots, sorted, are compared by ULD with the student's
  largest probabilities outside the shared ids (as many as the teacher has unshared slots there).
  Positions are the ones every sparse term counts (`covered_positions`). A dense same-vocabulary
  teacher shares everything, so there `hybrid` is forward KL.

Fu et al.'s recipe also needs two selections, both per term (`LossTerm.targets`, `.unaligned`):
which rows a term counts (all, chain-of-thought or answer-only targets; a batch marks its CoT rows
in `cot_rows [B]`), and whether a position without a teacher distribution is skipped or compared
with a one-hot teacher at its label (`with_one_hot_fallback`).

Every loss returns a `LossSum` (sum over counted tokens, number of tokens); `token_mean` divides by
the token count of the whole accumulated (and all-reduced) batch, so a sum of micro-batch losses
equals the loss of one big batch. `LossTerm` + `combine` build the weighted training loss.

Temperature T > 1 softens both distributions, which also shrinks the distillation gradient by about
1/T^2 (Hinton et al., 2015). `LossTerm.scale_by_temperature_squared` multiplies the term by T^2 in
`combine` (like an extra weight: the logged per-term value stays the unscaled divergence), so its
gradient keeps its size when T changes; off by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mwp.config.schema.loss_terms import TAILS, LossTerm
from mwp.signals.positions import (
    count_key,
    covered_positions,
    has_distribution,
    rows_in_scope,
)
from mwp.signals.types import IGNORE_INDEX, PAD_ID, SparseBatch, TeacherSignal

TAIL_LOGPROB_FLOOR = math.log(1e-8)
# The student's rest mass is kept >= ~1e-7 so its log (and gradient) stay finite when its
# top-k mass rounds to 1.
_MAX_STUDENT_TOPK_LOGMASS = -1e-7


class LossSum(NamedTuple):
    """A loss summed over tokens, and how many tokens it was summed over."""

    total: Tensor
    n_tokens: Tensor

    def mean(self) -> Tensor:
        return token_mean(self.total, self.n_tokens)


def token_mean(
    loss_sum: Tensor, n_tokens: Tensor | int | float, global_n_tokens: Tensor | float | None = None
) -> Tensor:
    """Per-token mean. With `global_n_tokens`, the micro-batch's share of the mean over a larger batch.

    Under gradient accumulation pass the token count of the whole accumulated batch (summed over
    micro-batches, and all-reduced over devices): the micro-batch losses then add up to the
    big-batch mean, however unevenly tokens fall into micro-batches. Frameworks that themselves
    divide by the number of micro-batches (Lightning's automatic optimisation) or average
    gradients over devices (DDP) need that factor multiplied back. Zero tokens give zero, not NaN.
    """
    denominator = n_tokens if global_n_tokens is None else global_n_tokens
    denominator = torch.as_tensor(denominator, dtype=loss_sum.dtype, device=loss_sum.device)
    return loss_sum / denominator.clamp(min=1)


def _upcast(x: Tensor) -> Tensor:
    """Half precision is computed in float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _GatheredLogSoftmax(torch.autograd.Function):
    """`log_softmax(logits / T).gather(-1, index)` without keeping a `[B, L, V]` log-softmax.

    Forward keeps only the logits (already alive) and the log-normaliser; backward builds the one
    `[B, L, V]` gradient in place: softmax * (-sum of upstream grads) + scatter of upstream grads.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, index: Tensor, temperature: float) -> Tensor:
        scaled = _upcast(logits) if temperature == 1.0 else _upcast(logits) / temperature
        log_probs = torch.log_softmax(scaled, dim=-1)  # transient: freed when forward returns
        out = log_probs.gather(-1, index)
        # The normaliser from one entry per position (the first gathered id) instead of a second
        # pass over the vocabulary; a full log-sum-exp only where that entry is not finite.
        first = index[..., :1]
        log_norm = scaled.gather(-1, first) - log_probs.gather(-1, first)
        if not bool(torch.isfinite(log_norm).all()):
            log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
        ctx.save_for_backward(logits, index, log_norm)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        logits, index, log_norm = ctx.saved_tensors
        temperature = ctx.temperature
        if temperature == 1.0:
            grad = torch.softmax(_upcast(logits.detach()), dim=-1)
        else:
            grad = _upcast(logits.detach()).div(temperature).sub_(log_norm).exp_()
        grad.mul_(-grad_out.sum(dim=-1, keepdim=True))
        grad.scatter_add_(-1, index, grad_out)
        if temperature != 1.0:
            grad.div_(temperature)
        return grad.to(logits.dtype), None, None


def gathered_log_softmax(logits: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
    """Student log-probabilities (at `temperature`) of the ids in `index` `[..., k]`; memory-lean backward."""
    return _GatheredLogSoftmax.apply(logits, index.long(), float(temperature))


def _check(temperature: float, beta: float, tail: str) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """sum_x a(x) (log a(x) - log b(x)) over the last dim; outcomes with a = 0 contribute exactly 0.

    Masked outcomes are replaced by finite values before any arithmetic, so no NaN can reach the
    gradient through the unused branch of `where`.
    """
    present = log_a > float("-inf")
    safe_a = torch.where(present, log_a, torch.zeros_like(log_a))
    safe_b = torch.where(present, log_b, torch.zeros_like(log_b))
    terms = safe_a.exp() * (safe_a - safe_b)
    return torch.where(present, terms, torch.zeros_like(terms)).sum(dim=-1)


def _divergence(kind: str, teacher_lp: Tensor, student_lp: Tensor, beta: float) -> Tensor:
    """Per-position divergence between two log-distributions over the last dim."""
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        return _kl_terms(teacher_lp, student_lp)
    if kind == "reverse_kl":
        impossible = teacher_lp == float("-inf")
        return _kl_terms(student_lp, teacher_lp.masked_fill(impossible, TAIL_LOGPROB_FLOOR))
    if kind == "jsd":
        mixture = torch.logaddexp(student_lp + math.log(1 - beta), teacher_lp + math.log(beta))
        return beta * _kl_terms(teacher_lp, mixture) + (1 - beta) * _kl_terms(student_lp, mixture)
    raise ValueError(f"unknown divergence {kind!r}; expected forward_kl, reverse_kl or jsd")


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both sides of -log 2."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _sparse_distributions(
    student_at_ids: Tensor, target: SparseBatch, temperature: float, tail: str
) -> tuple[Tensor, Tensor]:
    """Teacher and student log-distributions over (k ids + rest)."""
    neg_inf = float("-inf")
    teacher_lp = target.logprobs.to(student_at_ids.dtype)
    valid = (target.ids >= 0) & (teacher_lp > neg_inf)
    has_any = has_distribution(target)
    # Positions without any id are dropped by the caller; give them one certain outcome in slot 0
    # so every log-sum-exp below stays finite (an all -inf one has a NaN gradient).
    empty = torch.zeros_like(valid)
    empty[..., 0] = ~has_any
    teacher_lp = torch.where(empty, 0.0, teacher_lp)
    valid = valid | empty
    teacher_lp = teacher_lp.masked_fill(~valid, neg_inf)
    student_lp = student_at_ids.masked_fill(~valid, neg_inf)
    if tail == "renormalize":
        scaled = teacher_lp / temperature
        norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
        teacher_lp = torch.where(valid, scaled - norm, neg_inf)
        teacher_rest = torch.full_like(norm, neg_inf)
    elif tail == "none":
        if temperature != 1.0:
            raise ValueError("tail='none' takes the top-k as reported and needs temperature=1")
        # The reported top-k as it is (sums to < 1) and no rest outcome: forward KL is then
        # sum_i p_i (log p_i - log q_i) over the k ids (Fu et al., 2023).
        teacher_rest = torch.full_like(teacher_lp[..., :1], neg_inf)
    else:
        if temperature != 1.0:
            raise ValueError(
                "tail='bucket' needs temperature=1 for sparse teacher targets: the tempered mass of the "
                "unseen tail is unknown (use tail='renormalize' or temperature=1)"
            )
        mass = torch.logsumexp(teacher_lp, dim=-1, keepdim=True)
        # Rounding (of the teacher's reported logprobs, or of a full-vocabulary top-k's sum) can push
        # the top-k mass a hair over 1: scale it back, leaving no tail.
        excess = mass.clamp(min=0.0)
        teacher_lp = teacher_lp - excess
        teacher_rest = _log1mexp(mass.clamp(max=0.0))
    student_mass = torch.logsumexp(student_lp, dim=-1, keepdim=True)
    student_rest = _log1mexp(student_mass.clamp(max=_MAX_STUDENT_TOPK_LOGMASS))
    return (
        torch.cat([teacher_lp, teacher_rest], dim=-1),
        torch.cat([student_lp, student_rest], dim=-1),
    )


def _position_mask(mask: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.shape != shape:
        raise ValueError(f"mask must be {tuple(shape)}, got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def _reduce(per_position: Tensor, mask: Tensor) -> LossSum:
    zeros = torch.zeros_like(per_position)
    return LossSum(torch.where(mask, per_position, zeros).sum(), mask.sum())


def distill_loss(
    kind: str,
    student_logits: Tensor,
    teacher: TeacherSignal,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    tail: str = "bucket",
    student_at_ids: Tensor | None = None,
) -> LossSum:
    """Divergence `kind` (forward_kl | reverse_kl | jsd) between teacher and student, summed over positions.

    `mask [B, L]` selects positions (e.g. `labels != -100`); a sparse teacher's own mask is applied
    too. `student_at_ids` lets a caller that already gathered the student's log-probabilities at the
    sparse ids (at this temperature) share them.
    """
    _check(temperature, beta, tail)
    shape = student_logits.shape[:-1]
    positions = _position_mask(mask, shape, student_logits.device)
    if isinstance(teacher, SparseBatch):
        if teacher.mask.shape != shape:
            raise ValueError(f"sparse teacher is {tuple(teacher.mask.shape)}, student logits {tuple(shape)}")
        # An unshared slot names no student token: its probability is missing mass here.
        teacher = teacher.shared_only()
        if student_at_ids is None:
            student_at_ids = gathered_log_softmax(student_logits, teacher.ids.clamp(min=0), temperature)
        teacher_lp, student_lp = _sparse_distributions(student_at_ids, teacher, temperature, tail)
        positions = positions & covered_positions(teacher)
    else:
        if teacher.shape != student_logits.shape:
            raise ValueError(
                f"dense teacher logits {tuple(teacher.shape)} differ from student logits {tuple(student_logits.shape)}"
            )
        teacher_lp = torch.log_softmax(_upcast(teacher) / temperature, dim=-1)
        student_lp = torch.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    return _reduce(_divergence(kind, teacher_lp, student_lp, beta), positions)


def forward_kl(student_logits: Tensor, teacher: TeacherSignal, **kwargs: Any) -> LossSum:
    """KL(teacher || student): mode-covering; what `F.kl_div(student_logp, teacher_logp, log_target=True)` sums."""
    return distill_loss("forward_kl", student_logits, teacher, **kwargs)


def reverse_kl(student_logits: Tensor, teacher: TeacherSignal, **kwargs: Any) -> LossSum:
    """KL(student || teacher): mode-seeking."""
    return distill_loss("reverse_kl", student_logits, teacher, **kwargs)


def generalized_jsd(
    student_logits: Tensor, teacher: TeacherSignal, *, beta: float = 0.5, **kwargs: Any
) -> LossSum:
    """Generalised Jensen-Shannon divergence, in TRL's GKD convention.

    With M = beta * teacher + (1 - beta) * student:
    JSD_beta = beta * KL(teacher || M) + (1 - beta) * KL(student || M).
    The formula itself vanishes at beta = 0 and 1; like TRL, beta = 0 returns forward KL and
    beta = 1 reverse KL, the limits of JSD_beta / beta and JSD_beta / (1 - beta).
    """
    return distill_loss("jsd", student_logits, teacher, beta=beta, **kwargs)


def cross_entropy(student_logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> LossSum:
    """Token cross-entropy summed over labelled positions."""
    counted = labels != ignore_index
    total = torch.nn.functional.cross_entropy(
        _upcast(student_logits).flatten(0, -2), labels.flatten(), ignore_index=ignore_index, reduction="sum"
    )
    return LossSum(total, counted.sum())


@dataclass
class CombinedLoss:
    """The weighted total (for backward) and each term's token-mean (detached, for logging)."""

    total: Tensor
    parts: dict[str, Tensor]
    n_tokens: dict[str, Tensor]


def with_one_hot_fallback(teacher: SparseBatch, labels: Tensor) -> SparseBatch:
    """`teacher` with a one-hot distribution at the label wherever a labelled position has none.

    Comparing a student with a one-hot teacher by forward KL is its cross-entropy at the label, so
    an unaligned position trains as in sample matching (Fu et al., 2023) inside the KL term.
    """
    if labels.shape != teacher.mask.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match the sparse teacher {tuple(teacher.mask.shape)}"
        )
    fill = (labels != IGNORE_INDEX) & ~covered_positions(teacher)
    slot0 = torch.zeros_like(teacher.ids, dtype=torch.bool)
    slot0[..., 0] = True
    one_hot_ids = torch.where(slot0, labels.clamp(min=0)[..., None].to(teacher.ids.dtype), PAD_ID)
    one_hot_lp = torch.where(slot0, 0.0, float("-inf")).to(teacher.logprobs.dtype)
    filled = fill[..., None]
    in_vocab = teacher.in_vocab
    if in_vocab is not None:
        in_vocab = torch.where(filled, slot0, in_vocab)
    return SparseBatch(
        ids=torch.where(filled, one_hot_ids, teacher.ids),
        logprobs=torch.where(filled, one_hot_lp, teacher.logprobs),
        mask=teacher.mask.to(torch.bool) | fill,
        in_vocab=in_vocab,
    )


def keep_top_slots(teacher: SparseBatch, k: int, labels: Tensor | None = None) -> tuple[SparseBatch, Tensor]:
    """`k` slots of each position (fewer if the teacher has fewer): the slot of the label (`labels
    [B, L]`, the token the target actually holds) whenever the teacher has one, then the most probable
    others; and their slot indices `[B, L, k']` into `teacher`'s slots. Positions keep their mask;
    emptier slots stay unused. Without the label's slot kept, a label the teacher ranks below k would
    get no teacher mass at the position that trains it (Fu et al. (2023) always keep the sampled token)."""
    if k >= teacher.ids.shape[-1]:
        index = torch.arange(teacher.ids.shape[-1], device=teacher.ids.device).expand_as(teacher.ids)
        return teacher, index
    valid = (teacher.ids >= 0) & (teacher.logprobs > float("-inf"))
    scores = torch.where(valid, teacher.logprobs.float(), float("-inf"))
    if labels is not None:
        is_label = valid & (teacher.ids == labels[..., None].to(teacher.ids.dtype))
        if teacher.in_vocab is not None:  # an unshared slot's id is a placeholder, not a token
            is_label = is_label & teacher.in_vocab.to(torch.bool)
        first_label = is_label & (is_label.cumsum(dim=-1) == 1)
        index = scores.masked_fill(first_label, float("inf")).topk(k, dim=-1).indices
        # Most probable first, as without the label.
        index = index.gather(-1, scores.gather(-1, index).argsort(dim=-1, descending=True, stable=True))
    else:
        index = scores.topk(k, dim=-1).indices
    in_vocab = teacher.in_vocab.gather(-1, index) if teacher.in_vocab is not None else None
    kept = SparseBatch(
        teacher.ids.gather(-1, index), teacher.logprobs.gather(-1, index), teacher.mask, in_vocab
    )
    return kept, index


def counts_by_teacher(term: LossTerm, teacher: TeacherSignal | None) -> bool:
    """Whether `term` counts only the positions a sparse teacher covers (else every labelled one)."""
    return isinstance(teacher, SparseBatch) and term.needs_teacher and term.unaligned == "skip"


def term_count_key(term: LossTerm, sparse: bool) -> str:
    """The `window_n_tokens` entry (`mwp.signals.positions.window_counts`) that `term` divides by."""
    return count_key(term.targets, sparse and term.needs_teacher and term.unaligned == "skip")


def term_positions(
    term: LossTerm, labels: Tensor, teacher: TeacherSignal | None = None, cot_rows: Tensor | None = None
) -> Tensor:
    """`[B, L]` positions `term` sums over: labelled positions of its rows, and with a sparse teacher
    and `unaligned=skip` only those the teacher covers."""
    positions = rows_in_scope(labels, term.targets, cot_rows)
    if counts_by_teacher(term, teacher):
        assert isinstance(teacher, SparseBatch)
        positions = positions & covered_positions(teacher)
    return positions


def count_tokens(
    terms: Sequence[LossTerm],
    labels: Tensor,
    teacher: TeacherSignal | None = None,
    cot_rows: Tensor | None = None,
) -> dict[str, Tensor]:
    """Tokens each term counts in one micro-batch; sum these over an accumulation window (and
    all-reduce over devices) to get `combine`'s `global_n_tokens`."""
    return {t.name: term_positions(t, labels, teacher, cot_rows).sum() for t in terms}


def _teacher_probs(teacher: SparseBatch, temperature: float, tail: str, dtype: torch.dtype) -> Tensor:
    """A sparse teacher's slot probabilities `[B, L, k]` (0 in unused slots), at `temperature`."""
    logprobs = teacher.logprobs.to(dtype)
    valid = torch.isfinite(logprobs)
    if tail == "renormalize":
        scaled = torch.where(valid, logprobs / temperature, float("-inf"))
        norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
        safe_norm = torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm))
        return torch.where(valid, (scaled - safe_norm).exp(), 0.0)
    if temperature != 1.0:
        raise ValueError(
            f"tail={tail!r} compares the teacher's reported probabilities and needs temperature=1 "
            "(use tail='renormalize' for a tempered sparse teacher)"
        )
    return torch.where(valid, logprobs.exp(), 0.0)


def sorted_l1(teacher_sorted: Tensor, student_sorted: Tensor) -> Tensor:
    """sum_i |p_(i) - q_(i)| of two descending probability vectors, the shorter padded with zeros."""
    width = max(teacher_sorted.shape[-1], student_sorted.shape[-1])
    pad_t = torch.nn.functional.pad(teacher_sorted, (0, width - teacher_sorted.shape[-1]))
    pad_s = torch.nn.functional.pad(student_sorted, (0, width - student_sorted.shape[-1]))
    return (pad_t - pad_s).abs().sum(dim=-1)


def uld_loss(
    student_logits: Tensor,
    teacher: TeacherSignal,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    tail: str = "bucket",
) -> LossSum:
    """Universal logit distillation (Boizard et al., 2024), summed over positions (see the module doc).

    Needs no vocabulary mapping: a dense teacher's logits may have any vocabulary size, and a sparse
    teacher's ids are never read, only its probabilities.
    """
    _check(temperature, 0.5, tail)
    shape = student_logits.shape[:-1]
    positions = _position_mask(mask, shape, student_logits.device)
    student_probs = torch.softmax(_upcast(student_logits) / temperature, dim=-1)
    if isinstance(teacher, SparseBatch):
        if teacher.mask.shape != shape:
            raise ValueError(f"sparse teacher is {tuple(teacher.mask.shape)}, student logits {tuple(shape)}")
        teacher_probs = _teacher_probs(teacher, temperature, tail, student_probs.dtype)
        teacher_sorted = teacher_probs.sort(dim=-1, descending=True).values
        student_sorted = student_probs.topk(
            min(teacher_probs.shape[-1], student_probs.shape[-1]), dim=-1
        ).values
        if tail == "renormalize":
            student_sorted = student_sorted / student_sorted.sum(dim=-1, keepdim=True)
        positions = positions & covered_positions(teacher)
    else:
        if teacher.shape[:-1] != shape:
            raise ValueError(
                f"dense teacher logits {tuple(teacher.shape)} do not match student positions {tuple(shape)}"
            )
        teacher_sorted = (
            torch.softmax(_upcast(teacher) / temperature, dim=-1).sort(dim=-1, descending=True).values
        )
        student_sorted = student_probs.sort(dim=-1, descending=True).values
    return _reduce(sorted_l1(teacher_sorted.to(student_sorted.dtype), student_sorted), positions)


def hybrid_loss(
    student_logits: Tensor,
    teacher: TeacherSignal,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    tail: str = "bucket",
    student_at_ids: Tensor | None = None,
) -> LossSum:
    """GOLD-style hybrid: forward KL on shared tokens + ULD on the teacher's unshared ones (module doc)."""
    if not isinstance(teacher, SparseBatch):
        return distill_loss(
            "forward_kl", student_logits, teacher, mask=mask, temperature=temperature, tail=tail
        )
    _check(temperature, 0.5, tail)
    shape = student_logits.shape[:-1]
    if teacher.mask.shape != shape:
        raise ValueError(f"sparse teacher is {tuple(teacher.mask.shape)}, student logits {tuple(shape)}")
    positions = _position_mask(mask, shape, student_logits.device) & covered_positions(teacher)
    ids = teacher.ids.clamp(min=0).long()
    teacher_probs = _teacher_probs(teacher, temperature, tail, _upcast(student_logits).dtype)
    present = teacher_probs > 0
    in_vocab = teacher.in_vocab.to(torch.bool) if teacher.in_vocab is not None else torch.ones_like(present)
    shared = present & in_vocab & (teacher.ids >= 0)
    unshared = present & ~shared

    # KL over the shared ids plus one rest outcome on each side.
    neg_inf = float("-inf")
    if student_at_ids is None:
        student_at_ids = gathered_log_softmax(student_logits, ids, temperature)
    teacher_lp = torch.where(shared, teacher_probs.clamp(min=1e-38).log(), neg_inf)
    teacher_mass = torch.logsumexp(teacher_lp, dim=-1, keepdim=True)
    teacher_rest = _log1mexp(teacher_mass.clamp(max=0.0))
    student_lp = student_at_ids.masked_fill(~shared, neg_inf)
    has_shared = shared.any(dim=-1, keepdim=True)
    # A position without shared ids gets one certain dummy outcome on both sides: finite, and KL 0.
    dummy = torch.zeros_like(shared)
    dummy[..., 0] = ~has_shared[..., 0]
    student_lp = torch.where(dummy, 0.0, student_lp)
    student_mass = torch.logsumexp(student_lp, dim=-1, keepdim=True)
    student_rest = _log1mexp(student_mass.clamp(max=_MAX_STUDENT_TOPK_LOGMASS))
    kl = _kl_terms(
        torch.cat([teacher_lp, teacher_rest], dim=-1), torch.cat([student_lp, student_rest], dim=-1)
    )
    kl = torch.where(has_shared[..., 0], kl, torch.zeros_like(kl))

    # ULD between the teacher's unshared probabilities and the student's largest outside the shared ids.
    n_unshared = unshared.sum(dim=-1, keepdim=True)
    width = max(int(n_unshared.max()) if n_unshared.numel() else 0, 1)
    student_probs = torch.softmax(_upcast(student_logits) / temperature, dim=-1)
    excluded = torch.zeros_like(student_probs).scatter_add_(-1, ids, shared.to(student_probs.dtype)) > 0
    student_top = student_probs.masked_fill(excluded, 0.0).topk(width, dim=-1).values
    rank = torch.arange(width, device=student_top.device)
    student_top = torch.where(rank < n_unshared, student_top, 0.0)
    teacher_top = torch.where(unshared, teacher_probs, 0.0).sort(dim=-1, descending=True).values[..., :width]
    uld = sorted_l1(teacher_top, student_top)
    return _reduce(kl + uld, positions)


def combine(
    terms: Sequence[LossTerm],
    student_logits: Tensor,
    labels: Tensor,
    teacher: TeacherSignal | None = None,
    *,
    global_n_tokens: Mapping[str, Tensor | float] | None = None,
    cot_rows: Tensor | None = None,
) -> CombinedLoss:
    """Weighted sum of the terms' token-means over `labels != -100` (each times `LossTerm.scale`).

    Cross-entropy and the sparse distillation terms at the same temperature share one gather of the
    student's log-probabilities: no `[B, L, V]` log-softmax is kept for backward, which builds one
    `[B, L, V]` gradient buffer per temperature (cross-entropy alone is lighter than
    `F.cross_entropy`; a sparse teacher adds only `[B, L, k]` tensors; `uld` and `hybrid` keep
    a `[B, L, V]` softmax).
    `global_n_tokens` (term name -> tokens in the whole accumulated batch) makes micro-batch losses
    add up to the big-batch loss; without it each term is a mean over this batch. `cot_rows [B]`
    marks chain-of-thought rows, for terms with `targets` other than `all`.
    """
    if not terms:
        raise ValueError("loss.terms is empty: the training loss needs at least one term")
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"loss.terms names must be unique, got {names}")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match student logits {tuple(student_logits.shape)}"
        )
    if teacher is None and any(t.needs_teacher for t in terms):
        missing = [t.name for t in terms if t.needs_teacher]
        raise ValueError(f"loss.terms {missing} need a teacher signal, but the batch has none")
    safe_labels = labels.clamp(min=0)[..., None]
    filled = teacher
    if isinstance(teacher, SparseBatch) and any(t.unaligned == "one_hot" for t in terms):
        # Filled positions are uncovered in `teacher`, so terms that skip them share this gather.
        filled = with_one_hot_fallback(teacher, labels)

    # One gather per temperature over [label (cross-entropy, temperature 1), sparse ids...].
    gathered_kinds = ("forward_kl", "reverse_kl", "jsd", "hybrid")
    has_ce = any(t.kind == "ce" for t in terms)
    sparse_index = filled.ids.clamp(min=0).long() if isinstance(filled, SparseBatch) else None
    gathered: dict[float, Tensor] = {}
    for temperature in sorted({t.temperature for t in terms}):
        pieces = [safe_labels] if temperature == 1.0 and has_ce else []
        if sparse_index is not None and any(
            t.kind in gathered_kinds and t.temperature == temperature for t in terms
        ):
            pieces.append(sparse_index)
        if pieces:
            gathered[temperature] = gathered_log_softmax(
                student_logits, torch.cat(pieces, dim=-1), temperature
            )

    total = student_logits.new_zeros((), dtype=torch.float32)
    parts: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    for term in terms:
        rows = rows_in_scope(labels, term.targets, cot_rows)
        if term.kind == "ce":
            summed = _reduce(-gathered[1.0][..., 0], rows)
        else:
            assert teacher is not None and filled is not None
            signal = filled if term.unaligned == "one_hot" else teacher
            student_at_ids = None
            if isinstance(signal, SparseBatch) and term.kind in gathered_kinds:
                student_at_ids = gathered[term.temperature][..., -signal.ids.shape[-1] :]
            if isinstance(signal, SparseBatch) and term.top_k is not None:
                signal, slots = keep_top_slots(signal, term.top_k, labels)
                if student_at_ids is not None:
                    student_at_ids = student_at_ids.gather(-1, slots)
            if term.kind == "uld":
                summed = uld_loss(
                    student_logits, signal, mask=rows, temperature=term.temperature, tail=term.tail
                )
            elif term.kind == "hybrid":
                summed = hybrid_loss(
                    student_logits,
                    signal,
                    mask=rows,
                    temperature=term.temperature,
                    tail=term.tail,
                    student_at_ids=student_at_ids,
                )
            else:
                summed = distill_loss(
                    term.kind,
                    student_logits,
                    signal,
                    mask=rows,
                    temperature=term.temperature,
                    beta=term.beta,
                    tail=term.tail,
                    student_at_ids=student_at_ids,
                )
        denominator = None if global_n_tokens is None else global_n_tokens.get(term.name)
        if global_n_tokens is not None and denominator is None:
            raise ValueError(f"global_n_tokens has no count for loss term {term.name!r}")
        value = token_mean(summed.total, summed.n_tokens, denominator)
        total = total + term.weight * term.scale * value
        parts[term.name] = value.detach()
        counts[term.name] = summed.n_tokens
    return CombinedLoss(total=total, parts=parts, n_tokens=counts)
