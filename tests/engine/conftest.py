"""Engine-test fixtures: the tiny LMS tokenizer and template machines on it (session-wide, read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
    threads per op made a 2 s test take a minute. Restored after the engine tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models_dir: Path):
    """The tiny models loaded once for tests that only read them (decoder, machine, index)."""
    from hyfunc.models.bundle import ModelBundle

    return ModelBundle.load(tiny_models_dir)


@pytest.fixture(scope="session")
def lms_tokenizer(tiny_bundle):
    return tiny_bundle.lms_tokenizer


@pytest.fixture(scope="session")
def make_machine(tiny_bundle):
    """A factory for TemplateMachines with given limits, cached (vocabulary tables are built once each)."""
    from hyfunc.cascade.template import MachineLimits, TemplateMachine

    cache: dict[tuple, TemplateMachine] = {}

    def make(**limits) -> TemplateMachine:
        key = tuple(sorted(limits.items()))
        if key not in cache:
            cache[key] = TemplateMachine(
                tiny_bundle.lms_tokenizer, MachineLimits(**limits), logits_size=int(tiny_bundle.lms.config.vocab_size)
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def machine(make_machine):
    return make_machine()


@pytest.fixture
def tiny_config(tiny_config):
    """Engine tests keep random-model answers short: a random LMS rarely closes a string or an
    array by itself, so the length caps decide how long each test decodes."""
    tiny_config.cascade.max_string_tokens = 6
    tiny_config.cascade.max_array_items = 2
    tiny_config.cascade.max_number_tokens = 4
    return tiny_config


@pytest.fixture(scope="session")
def tiny_decoder(tiny_bundle, machine):
    """One LMSDecoder for the session, as in a worker process (its shared prefix is computed once).
    It runs whatever program each job brings, so tests pair it with machines of any limits.
    Passes are never split: the width policy is fitted from pass timings, and the tests count passes."""
    from hyfunc.cascade.decoder import LMSDecoder

    return LMSDecoder(tiny_bundle.lms, tiny_bundle.lms_tokenizer, machine, tiny_bundle.device, split_chunks=False)
