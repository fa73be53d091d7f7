"""The template machine on both vocabulary families: byte-level BPE (GPT-2/Qwen/SmolLM2, "Ġ" for
a space) and SentencePiece (Gemma/Llama, "▁" for a space, byte-fallback "<0x0A>" tokens), with
and without a prepended "▁". Tiny tokenizers of each kind are trained here with `tokenizers`.

For each: every token's bytes are right (an encoding renders back to its text byte for byte),
teacher sequences replay to the gold calls, copy mode offers the query's spans, and random
answers are valid JSON whose values are what the bytes say.
"""

from __future__ import annotations

import json
import random

import pytest
from engine_support import ALL_TOOLS, EMAIL, WEATHER, drive, parse_answer, random_picker
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hyfunc.cascade.template import MachineLimits, TemplateMachine
from hyfunc.cascade.vocab import METASPACE, token_bytes_table, vocabulary_kind
from hyfunc.schema import Call, validate_call

CORPUS = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "unit": "celsius"}}\n</tool_call>',
    "what is the weather in Paris for 3 days, and in New York tomorrow? email bob and alice",
    '{"to": ["bob@example.com"], "subject": "Quarterly report", "urgent": true}',
    "convert 250.75 usd to eur; set the thermostat to 21.5 celsius in the living room",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
TEXTS = ['"', "Paris", " New York", "東京 café", "a\nb\tc", 'say "hi" \\ bye', "250.75", "  two  spaces", "<tool_call>"]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<tool_call>", "</tool_call>"],
    )


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap(tok)


def sentencepiece_tokenizer(prepend: str | None) -> PreTrainedTokenizerFast:
    """Gemma style (``prepend=None``: spaces normalised to "▁", no pre-tokenizer) or Llama style
    (a Metaspace pre-tokenizer with the given prepend scheme); byte fallback for unseen bytes."""
    tok = Tokenizer(models.BPE(byte_fallback=True))
    if prepend is None:
        tok.normalizer = normalizers.Replace(" ", METASPACE)
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme=prepend)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):  # SentencePiece's byte-fallback pieces
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": METASPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    }
    return _wrap(Tokenizer.from_str(json.dumps(spec)))


KINDS = {
    "byte-level": (byte_level_tokenizer, "byte_level"),
    "sentencepiece-gemma": (lambda: sentencepiece_tokenizer(None), "sentencepiece"),
    "sentencepiece-prepend-first": (lambda: sentencepiece_tokenizer("first"), "sentencepiece"),
    "sentencepiece-prepend-always": (lambda: sentencepiece_tokenizer("always"), "sentencepiece"),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request) -> tuple[str, PreTrainedTokenizerFast, str]:
    build, expected = KINDS[request.param]
    return request.param, build(), expected


def test_token_bytes_match_the_text(kind) -> None:
    name, tokenizer, expected = kind
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert vocabulary_kind(tokenizer, pieces) == expected
    table = token_bytes_table(tokenizer)
    if expected == "sentencepiece":
        newline = tokenizer.convert_tokens_to_ids("<0x0A>")
        assert table[newline] == b"\n"
        assert any(p and p.startswith(METASPACE) and table[i][:1] == b" " for i, p in enumerate(pieces))
    machine = TemplateMachine(tokenizer, MachineLimits())
    for text in TEXTS:
        ids = machine.encode(text)
        assert machine.vocab.render(ids) == text.encode("utf-8"), (name, text, tokenizer.convert_ids_to_tokens(ids))
    assert machine.vocab.token_bytes[machine.vocab.quote_id] == b'"'


GOLD = [
    [Call(name="get_weather", arguments={"city": "New York", "unit": "celsius", "days": 3})],
    [Call(name="send_email", arguments={"to": ["bob@example.com", "東京 café"], "subject": 'say "hi"\n', "urgent": True})],
    [
        Call(name="convert_currency", arguments={"amount": 250.75, "from": "usd", "to": "eur"}),
        Call(name="set_thermostat", arguments={"room": "living room", "celsius": -21.5}),
    ],
]


@pytest.mark.parametrize("gold", GOLD, ids=["weather", "email", "two-calls"])
def test_teacher_replays_and_renders_the_gold_json(kind, gold) -> None:
    _, tokenizer, _ = kind
    machine = TemplateMachine(tokenizer, MachineLimits())
    record = machine.teacher(ALL_TOOLS, gold)
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    assert machine.replay(ALL_TOOLS, generated) == gold
    text = machine.vocab.render(record.ids).decode("utf-8")
    calls = parse_answer(text)
    assert calls == [c.model_dump() for c in gold]


def test_copy_mode_offers_the_query_spans(kind) -> None:
    _, tokenizer, _ = kind
    machine = TemplateMachine(tokenizer, MachineLimits(copy_values=True))
    query = "what is the weather in New York for 3 days"
    gold = [Call(name="get_weather", arguments={"city": "New York", "days": 3})]
    record = machine.teacher([WEATHER], gold, source=query)
    generated = [t for t, g in zip(record.ids, record.generated, strict=True) if g]
    assert machine.replay([WEATHER], generated, source=query) == gold
    # The first token of the city is chosen among the query's word-starting tokens only.
    city_step = next(i for i, allowed in enumerate(record.allowed) if allowed and len(allowed) > 2)
    offered = {machine.vocab.token_bytes[t] for t in record.allowed[city_step] if t != machine.vocab.quote_id}
    assert offered and all(data.lstrip() and data in query.encode() for data in offered)


@pytest.mark.parametrize("seed", range(4))
def test_random_answers_are_valid_json(kind, seed) -> None:
    _, tokenizer, _ = kind
    machine = TemplateMachine(tokenizer, MachineLimits(max_calls=2, max_string_tokens=5, max_number_tokens=4, max_array_items=2))
    rng = random.Random(seed)
    trace = drive(machine.program([WEATHER, EMAIL]), random_picker(rng, machine.vocab.quote_id))
    assert trace.calls is not None
    text = machine.vocab.render(trace.ids).decode("utf-8", errors="replace")
    parsed = parse_answer(text)
    tools = {t.name: t for t in (WEATHER, EMAIL)}
    for call, obj in zip(trace.calls, parsed, strict=True):
        validate_call(call, [tools[call.name]])
        if "\ufffd" not in text:  # values equal their bytes unless a random pick split a character
            assert obj == call.model_dump()


@pytest.mark.parametrize("base", ["smollm2-135m-instruct", "gemma3-270m"])
def test_pulled_base_vocabularies(base) -> None:
    """The real vocabularies (49k byte-level, 262k SentencePiece) when their bases are pulled:
    exact encodings, teacher sequences that replay and render to the gold JSON, copy mode."""
    from transformers import AutoTokenizer

    from hyfunc.models.cache import base_dir, read_marker

    directory = base_dir(base)
    if read_marker(directory) is None:
        pytest.skip(f"{base} is not pulled (`hyfunc models pull {base}`)")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    machine = TemplateMachine(tokenizer, MachineLimits(copy_values=True))
    for text in TEXTS:
        assert machine.vocab.render(machine.encode(text)) == text.encode("utf-8"), text
    query = "what is the weather in New York for 3 days; email bob@example.com, subject Quarterly report"
    for gold in GOLD:
        record = machine.teacher(ALL_TOOLS, gold, source=query)
        plain = machine.teacher(ALL_TOOLS, gold)  # no copy mode: nothing is jump-forwarded but the template
        assert plain.ids == record.ids
        generated = [t for t, g in zip(plain.ids, plain.generated, strict=True) if g]
        assert machine.replay(ALL_TOOLS, generated) == gold
        text = machine.vocab.render(record.ids).decode("utf-8").replace(machine.end_text, "<|im_end|>")
        assert parse_answer(text) == [c.model_dump() for c in gold]
