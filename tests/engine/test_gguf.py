"""GGUF round trip: a tiny random Llama written as a GGUF (llama.cpp's names, permutation and
tokenizer metadata) -> hyfunc's converter -> a plain safetensors checkpoint with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from gguf_support import CHATML_TEMPLATE, bpe_tokenizer, tiny_llama, write_llama_gguf

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


@pytest.mark.parametrize("tie", [True, False], ids=["tied-head", "separate-head"])
def test_gguf_round_trip_gives_the_same_logits(tmp_path, tokenizer, tie) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyfunc.models.gguf_convert import convert_gguf

    source = tiny_llama(tokenizer, tie=tie)
    (tmp_path / "gguf").mkdir()
    gguf_path = write_llama_gguf(source, tokenizer, tmp_path / "gguf" / "tiny.gguf")
    out = convert_gguf(gguf_path, tmp_path / "hf")

    # A normal checkpoint: no quantisation entry, loadable without the GGUF or the gguf package.
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").is_file()
    assert not (tmp_path / "hf.converting").exists()
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.config.tie_word_embeddings == tie

    ids = torch.tensor([tokenizer.encode("Find flights from Boston to Denver for 2 adults.", add_special_tokens=False)])
    with torch.no_grad():
        expected = source(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # The tokenizer comes back from the GGUF metadata: vocabulary, specials and chat template.
    back = AutoTokenizer.from_pretrained(str(out))
    assert back.get_vocab() == tokenizer.get_vocab()
    assert back.eos_token == "<|im_end|>"
    assert back.chat_template == CHATML_TEMPLATE
    text = "Set the living room thermostat to 21.5 degrees <tool_call>"
    assert back.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path) -> None:
    from hyfunc.models.gguf_convert import ConversionError, convert_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConversionError, match="bad.gguf"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
