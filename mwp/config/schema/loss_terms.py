"""The configured loss terms (`loss.terms` entries), free of torch so a config is checked in milliseconds.

Each term is a TRL-style config dataclass: a help string per field and range checks in
`__post_init__`; the schema (`mwp.config.schema.LossConfig`) validates `loss.terms` through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

TAILS = ("bucket", "renormalize", "none")
KINDS = ("ce", "forward_kl", "reverse_kl", "jsd", "uld", "hybrid")
# Which training rows a term counts: every row, chain-of-thought targets, or answer-only targets.
TARGETS = ("all", "cot", "answer_only")
# Where a sparse teacher gives no distribution: leave the position to the other terms, or compare
# with a one-hot teacher at the label there (Fu et al., 2023).
UNALIGNED = ("skip", "one_hot")
_KIND_ALIASES = {"kl": "forward_kl", "rkl": "reverse_kl", "cross_entropy": "ce"}


def _help(text: str, default: Any = MISSING, choices: Sequence[str] = ()) -> Any:
    # `choices` (what `__post_init__` accepts) is for the generated config reference (mwp.config.reference)
    metadata = {"help": text, "choices": tuple(choices)} if choices else {"help": text}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the training loss (a `loss.terms` entry in the config)."""

    name: str = _help("label for logging; also the kind when `kind` is omitted (ce, kl, ...)")
    weight: float = _help("multiplier of this term's token-mean in the total, >= 0", 1.0)
    kind: str | None = _help(
        "ce | forward_kl (kl) | reverse_kl | jsd | uld (sorted-probability transport, no vocabulary mapping) | "
        "hybrid (forward KL on the tokens both vocabularies share, uld on the rest)",
        None,
        (*KINDS, *_KIND_ALIASES),
    )
    temperature: float = _help(
        "softens student and teacher before comparing, > 0 (distillation terms only)", 1.0
    )
    beta: float = _help(
        "jsd only: mixture weight of the teacher in [0, 1]; 0 = forward KL, 1 = reverse KL", 0.5
    )
    tail: str = _help(
        "sparse teachers: 'bucket' keeps the top-k's missing mass as one outcome; 'renormalize' rescales "
        "the top-k to sum to 1; 'none' takes the top-k as reported, no rest outcome (forward_kl and uld only)",
        "bucket",
        TAILS,
    )
    targets: str = _help(
        "rows this term counts: all | cot (chain-of-thought targets) | answer_only", "all", TARGETS
    )
    unaligned: str = _help(
        "sparse teachers: where a target position has no teacher distribution, 'skip' leaves it to the other "
        "terms, 'one_hot' compares with a one-hot teacher at the label (forward_kl only)",
        "skip",
        UNALIGNED,
    )
    top_k: int | None = _help(
        "sparse teachers: keep only k teacher slots a position: the label's (the token the target holds) "
        "whenever the teacher has it, then the most probable others (null: all it reports)",
        None,
    )
    scale_by_temperature_squared: bool = _help(
        "distillation terms only: multiply the term by temperature^2 in the total (Hinton et al.), so "
        "its gradient does not shrink as 1/T^2 when T > 1; the logged value stays unscaled",
        False,
    )

    def __post_init__(self) -> None:
        where = f"loss.terms.{self.name}"
        kind = self.kind if self.kind is not None else self.name
        kind = _KIND_ALIASES.get(kind, kind)
        if kind not in KINDS:
            raise ValueError(
                f"{where}.kind: unknown loss kind {kind!r}; expected one of {KINDS} (or kl, rkl)"
            )
        object.__setattr__(self, "kind", kind)
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"{where}.weight must be a finite number >= 0, got {self.weight}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        if kind == "ce" and self.temperature != 1.0:
            raise ValueError(f"{where}.temperature applies to distillation terms only; cross-entropy uses 1")
        if not isinstance(self.scale_by_temperature_squared, bool):
            raise ValueError(
                f"{where}.scale_by_temperature_squared must be true or false, got {self.scale_by_temperature_squared!r}"
            )
        if kind == "ce" and self.scale_by_temperature_squared:
            raise ValueError(
                f"{where}.scale_by_temperature_squared applies to distillation terms only; cross-entropy uses T=1"
            )
        if not 0 <= self.beta <= 1:
            raise ValueError(f"{where}.beta must be in [0, 1], got {self.beta}")
        if self.tail not in TAILS:
            raise ValueError(f"{where}.tail must be one of {TAILS}, got {self.tail!r}")
        if self.tail == "none" and kind not in ("forward_kl", "uld"):
            raise ValueError(
                f"{where}.tail=none (the un-renormalised top-k) applies to forward_kl and uld only: the other "
                "divergences need the teacher's whole distribution"
            )
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= 1000
        ):
            raise ValueError(f"{where}.top_k must be an integer in [1, 1000] or null, got {self.top_k!r}")
        if self.top_k is not None and kind == "ce":
            raise ValueError(f"{where}.top_k applies to distillation terms only")
        if self.targets not in TARGETS:
            raise ValueError(f"{where}.targets must be one of {TARGETS}, got {self.targets!r}")
        if self.unaligned not in UNALIGNED:
            raise ValueError(f"{where}.unaligned must be one of {UNALIGNED}, got {self.unaligned!r}")
        if self.unaligned == "one_hot" and kind != "forward_kl":
            raise ValueError(f"{where}.unaligned=one_hot applies to forward_kl only, not {kind}")

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "ce"

    @property
    def scale(self) -> float:
        """The factor `combine` applies besides `weight`: T^2 with `scale_by_temperature_squared`, else 1."""
        return self.temperature**2 if self.scale_by_temperature_squared else 1.0

    @classmethod
    def from_config(cls, entry: Mapping[str, Any], where: str = "loss.terms") -> LossTerm:
        known = {f.name for f in fields(cls)}
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        if "name" not in entry:
            raise ValueError(f"{where}: every loss term needs a name")
        return cls(**dict(entry))

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"{f.name}: {f.metadata['help']}" for f in fields(cls))


def terms_from_config(
    entries: Sequence[Mapping[str, Any]] | None, where: str = "loss.terms"
) -> list[LossTerm]:
    """`loss.terms` as `LossTerm`s; an error names the entry as `loss.terms[i].field`."""
    if not entries:
        raise ValueError(f"{where} is empty: the training loss needs at least one term")
    terms: list[LossTerm] = []
    for index, entry in enumerate(entries):
        here = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{here}: expected a mapping like {{name: ce, weight: 1.0}}, got {entry!r}")
        try:
            terms.append(LossTerm.from_config(entry, where=here))
        except TypeError as err:  # a value of the wrong type reached the dataclass
            raise ValueError(f"{here}: {err}") from err
        except ValueError as err:
            name = entry.get("name")
            message = str(err).replace(f"loss.terms.{name}.", f"{here}.") if name is not None else str(err)
            if message == str(err) and not message.startswith(here):
                message = f"{here}: {message}"
            raise ValueError(message) from err
    names = [t.name for t in terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}: term names must be unique, {duplicates} repeat")
    return terms
