"""Decoding settings recorded in the models' manifest (`hyfunc.json` → `decoding`) are what
inference uses: they win over the code defaults and lose to a config that sets a key explicitly."""

from __future__ import annotations

import json
import shutil

import pytest

from hyfunc.cascade.decoding import CODE_DEFAULTS, decoding_sources, resolve_decoding
from hyfunc.config import CascadeConfig, load_config


@pytest.fixture
def models_with_decoding(tmp_path, tiny_models_dir):
    def make(decoding: dict):
        directory = tmp_path / "models"
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(tiny_models_dir, directory, ignore=shutil.ignore_patterns("index"))
        manifest = json.loads((directory / "hyfunc.json").read_text())
        manifest["decoding"] = decoding
        (directory / "hyfunc.json").write_text(json.dumps(manifest))
        return directory

    return make


TRAINED = {"copy_values": True, "copy_distinct": False, "retriever_prior": 0.5, "max_calls": 2, "max_string_tokens": 7}


def test_manifest_wins_over_code_defaults_and_loses_to_explicit_config() -> None:
    resolved = resolve_decoding(CascadeConfig(), TRAINED)
    assert resolved.copy_values is True and resolved.copy_distinct is False
    assert resolved.retriever_prior == 0.5 and resolved.max_calls == 2 and resolved.max_string_tokens == 7
    # Keys the manifest does not carry: the code defaults.
    assert resolved.max_number_tokens == CODE_DEFAULTS["max_number_tokens"] == 12
    assert resolved.max_array_items == CODE_DEFAULTS["max_array_items"] == 8
    # Explicit config wins, including values equal to the code default (false, 0).
    explicit = CascadeConfig(copy_values=False, retriever_prior=0.0, max_calls=4)
    resolved = resolve_decoding(explicit, TRAINED)
    assert resolved.copy_values is False and resolved.retriever_prior == 0.0 and resolved.max_calls == 4
    assert resolved.copy_distinct is False and resolved.max_string_tokens == 7
    assert decoding_sources(explicit, TRAINED) == {
        "max_calls": "config", "max_string_tokens": "manifest", "max_number_tokens": "default",
        "max_array_items": "default", "copy_values": "config", "copy_distinct": "manifest", "retriever_prior": "config",
        "prompt_order": "default", "write_values": "default", "no_call": "default",
    }
    # No manifest settings at all: today's code defaults.
    assert resolve_decoding(CascadeConfig(), None).model_dump() == CascadeConfig(**CODE_DEFAULTS).model_dump()


def test_manifest_prompt_order_wins_over_the_code_default_and_loses_to_explicit_config() -> None:
    assert CODE_DEFAULTS["prompt_order"] == "canonical"
    assert resolve_decoding(CascadeConfig(), TRAINED).prompt_order == "canonical"  # manifest silent
    retrieval = TRAINED | {"prompt_order": "retrieval"}
    assert resolve_decoding(CascadeConfig(), retrieval).prompt_order == "retrieval"
    assert decoding_sources(CascadeConfig(), retrieval)["prompt_order"] == "manifest"
    explicit = CascadeConfig(prompt_order="canonical")
    assert resolve_decoding(explicit, retrieval).prompt_order == "canonical"
    assert decoding_sources(explicit, retrieval)["prompt_order"] == "config"
    with pytest.raises(ValueError, match="prompt_order"):
        CascadeConfig(prompt_order="random")


def test_the_cascade_renders_the_manifests_prompt_order_unless_configured(models_with_decoding) -> None:
    from hyfunc.cascade import Cascade
    from hyfunc.models.bundle import ModelBundle

    bundle = ModelBundle.load(models_with_decoding({"prompt_order": "retrieval"}))
    assert Cascade(bundle, CascadeConfig(), None).config.prompt_order == "retrieval"
    assert Cascade(bundle, CascadeConfig(prompt_order="canonical"), None).config.prompt_order == "canonical"
    assert Cascade(ModelBundle.load(models_with_decoding({})), CascadeConfig(), None).config.prompt_order == "canonical"


def test_a_yaml_key_set_explicitly_wins_and_an_absent_key_defers_to_the_manifest(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("cascade:\n  copy_values: false\n  top_k: 2\n")
    config = load_config(path)
    assert config.cascade.model_fields_set >= {"copy_values", "top_k"}
    resolved = resolve_decoding(config.cascade, TRAINED)
    assert resolved.copy_values is False  # set in the YAML
    assert resolved.max_calls == 2 and resolved.retriever_prior == 0.5  # absent there: from the manifest


def test_the_cascade_runs_with_the_manifests_settings_unless_configured(models_with_decoding) -> None:
    from hyfunc.cascade import Cascade
    from hyfunc.models.bundle import ModelBundle

    bundle = ModelBundle.load(models_with_decoding(TRAINED))
    cascade = Cascade(bundle, CascadeConfig(), None)
    limits = cascade.machine.limits
    assert limits.copy_values is True and limits.copy_distinct is False
    assert limits.max_calls == 2 and limits.max_string_tokens == 7 and limits.max_number_tokens == 12
    assert cascade.config.retriever_prior == 0.5
    overridden = Cascade(bundle, CascadeConfig(copy_values=False, max_calls=3), None)
    assert overridden.machine.limits.copy_values is False and overridden.machine.limits.max_calls == 3
    assert overridden.machine.limits.max_string_tokens == 7


def test_bad_manifest_decoding_is_an_error_naming_the_key(models_with_decoding) -> None:
    from hyfunc.models.bundle import Manifest, ModelBundle, ModelsError

    for decoding, message in (
        ({"copy_vals": True}, r"decoding: unknown key 'copy_vals'"),
        ({"copy_values": "yes"}, r"decoding\.copy_values: expected bool, got 'yes'"),
        ({"max_calls": True}, r"decoding\.max_calls: expected int, got True"),
        ({"max_calls": 0}, r"decoding\.max_calls: must be at least 1"),
        ({"retriever_prior": -1}, r"decoding\.retriever_prior: must be at least 0"),
        ({"prompt_order": "best"}, r"decoding\.prompt_order: must be one of \['canonical', 'retrieval'\], got 'best'"),
        ({"prompt_order": 1}, r"decoding\.prompt_order: expected str, got 1"),
    ):
        with pytest.raises(ModelsError, match=message):
            Manifest.read(models_with_decoding(decoding))
    # The projector makes one soft token; a manifest saying otherwise does not load.
    with pytest.raises(ModelsError, match="trained with 2 soft tokens, the projector makes 1"):
        ModelBundle.load(models_with_decoding({"soft_tokens": 2}))


def test_the_demo_models_carry_their_decoding_and_the_configs_leave_it_to_them() -> None:
    from hyfunc.config import REPO_ROOT
    from hyfunc.models.bundle import Manifest

    demo = Manifest.read(REPO_ROOT / "models" / "demo")
    assert demo.decoding["copy_values"] is True and demo.decoding["copy_distinct"] is True
    assert demo.decoding["soft_tokens"] == 1
    assert demo.decoding["prompt_order"] == "retrieval"  # the demo LMS was trained on best-first prompts
    for name in ("default.yaml", "service.yaml", "gpu.yaml"):
        cascade = load_config(REPO_ROOT / "configs" / name).cascade
        assert cascade.copy_values is None, name  # served as trained: extractive values on
        assert resolve_decoding(cascade, demo.decoding).copy_values is True
        assert cascade.prompt_order is None, name
        assert resolve_decoding(cascade, demo.decoding).prompt_order == "retrieval"


def test_training_records_how_the_lms_was_trained_to_decode() -> None:
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
    from hyfunc.training.lms import LMSTrainConfig
    from hyfunc.training.pipeline import Recipe, trained_decoding

    projector = SoftTokenProjector(ProjectorConfig(input_dim=8, output_dim=8, hidden_dim=8, num_tokens=2))
    constrained = trained_decoding(Recipe(lms=LMSTrainConfig(constrained=True)), projector)
    assert constrained == {
        "max_calls": 4, "max_string_tokens": 48, "max_number_tokens": 12, "max_array_items": 8,
        "copy_values": True, "copy_distinct": True, "retriever_prior": 1.0, "soft_tokens": 2,
        "prompt_order": "canonical", "write_values": False, "no_call": False,
    }
    assert trained_decoding(Recipe(lms=LMSTrainConfig(constrained=False)), projector)["copy_values"] is False


def test_the_no_call_ceiling_in_a_manifest_is_a_number_or_null(models_with_decoding) -> None:
    from hyfunc.models.bundle import Manifest, ModelsError

    directory = models_with_decoding({})
    manifest = json.loads((directory / "hyfunc.json").read_text())
    for good in (None, 0.41):
        (directory / "hyfunc.json").write_text(json.dumps({**manifest, "no_call_ceiling": good}))
        assert Manifest.read(directory).no_call_ceiling == good
    for bad in ("0.4", True, [0.4]):
        (directory / "hyfunc.json").write_text(json.dumps({**manifest, "no_call_ceiling": bad}))
        with pytest.raises(ModelsError, match="no_call_ceiling must be a number or null"):
            Manifest.read(directory)
