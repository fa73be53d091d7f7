"""Engine-test fixtures: the tiny LMS tokenizer and template machines on it (session-wide, read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
