"""A student vocabulary trained on the training split's sources and targets (`student.tokenizer`).

Offline there is no pretrained Chinese student, and a random-init student spends most of its steps
on Flan-T5's 32k vocabulary. Masked problems need far less: their numbers are placeholders N0..Nk,
so a word-level vocabulary of an English training split is a few thousand entries, and a
character-level one of a Chinese split a few thousand characters. Both keep N<k> and plain numbers
as one token each, isolate every punctuation mark and operator (so "(N0-N1)*N2" is seven tokens),
and carry T5's special tokens at T5's ids (<pad> 0, </s> 1, <unk> 2), with "</s>" appended to every
encoding as the T5 tokenizer does. The result is a `PreTrainedTokenizerFast`: `save_pretrained`
writes it beside the model, and `AutoTokenizer.from_pretrained(student_dir)` reloads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TokenizerKind = Literal["pretrained", "word", "char"]
TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)
TRAINED_KINDS = ("word", "char")

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)

# Placeholders and numbers stay whole; anything else that is not a letter or digit stands alone.
_WORD = r"N\d+|\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]|_"
_CHAR = r"N\d+|\d+(?:\.\d+)?|\S"


def train_tokenizer(
    texts: Iterable[str], kind: str = "word", *, min_frequency: int = 1, max_vocab: int = 32_000
) -> PreTrainedTokenizerFast:
    """A word- or character-level tokenizer trained on `texts`, with T5's special tokens.

    Entries seen fewer than `min_frequency` times map to <unk>, so the student learns what an
    unseen word looks like from the rare ones of the training split.
    """
    if kind not in TRAINED_KINDS:
        raise ValueError(f"student.tokenizer={kind!r}: a trained tokenizer is one of {list(TRAINED_KINDS)}")
    if min_frequency < 1:
        raise ValueError(f"student.vocab_min_frequency must be >= 1, got {min_frequency}")
    pattern = _WORD if kind == "word" else _CHAR
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    # Split keeps the gaps between matches as pieces too: whitespace is split off first.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(pattern), behavior="isolated")]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    # No decoder: decoded tokens are joined with spaces, which the equation scorer ignores.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    for token, expected in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)), strict=True):
        if fast.convert_tokens_to_ids(token) != expected:
            raise RuntimeError(f"{token} got id {fast.convert_tokens_to_ids(token)}, T5 expects {expected}")
    return fast
