"""Train a small byte-level BPE tokenizer (with the ChatML and tool-call special tokens)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hyfunc.models.soft_slot import SOFT_TOKEN

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", SOFT_TOKEN]

# Enough generic text that every byte, digit and JSON punctuation gets its own token even
# when the caller's corpus is small.
BASE_CORPUS = [
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 3}}',
    '[1, 2.5, -3e4, true, false, null, "a\\"b\\\\c\\n"]',
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'()[]{}<>@#$%^&*-_=+/|~`",
    "Please book a table for two at 7pm tomorrow, and remind me to call Alice.",
]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit tokens (as Qwen), so numbers are written digit by digit."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(BASE_CORPUS) + list(texts)
    tok.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
    )
    wrapped.padding_side = "right"
    return wrapped
