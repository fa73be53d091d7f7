"""`hyfunc train lms`: the projector and the LMS trained together with selective SFT.

Each training sequence is: shared LMS prefix + job prompt (with the soft-token slot) + the
answer as the template machine's teacher mode writes it. The loss covers only the tokens the
LMS generates at inference (values, end-of-value, include/skip and continue/end decisions);
injected syntax is context, never a target. Because the sequence comes from the very machine
inference runs, token boundaries are identical at train and inference time.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm import tqdm
from transformers import DynamicCache

from hyfunc.cascade.prompts import SOFT_TOKEN, lms_job_ids, lms_shared_prefix
from hyfunc.cascade.template import TemplateMachine
from hyfunc.models.bundle import save_module
from hyfunc.models.compat import cache_kwargs
from hyfunc.models.projector import SoftTokenProjector
from hyfunc.models.soft_slot import fill_soft_slots
from hyfunc.schema import Call, Tool


@dataclass
class LMSSequence:
    ids: list[int]
    generated: list[bool]  # per token: a target of the loss
    soft: torch.Tensor  # (d_lml,) the query's soft token
    # Per target, in order: the ids inference would choose among (None: the whole vocabulary).
    allowed: list[list[int] | None] | None = None
    # `allowed` as (row, col) index tensors plus unrestricted rows; built on first use.
    sparse_allowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)


@dataclass
class LMSTrainConfig:
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    save_every: int = 200
    seed: int = 0
    lora: bool = False  # for large pretrained LMS checkpoints (peft): every attention and MLP projection
    # Softmax over the tokens inference would allow at each step (extractive copy spans, the
    # options of a choice) instead of the whole vocabulary: the loss scores the decisions the
    # model really makes at inference with cascade.copy_values on.
    constrained: bool = False
    lora_rank: int = 16
    # LoRA on the top N decoder layers only (None: all). The soft token still enters at layer 0,
    # so the projector's gradient flows back through the frozen lower layers: this saves the
    # lower layers' weight-gradient work and adapter size, not their backward pass.
    lora_layers: int | None = None
    # bf16 autocast for the forward and backward passes, on CUDA and on CPUs with bf16 support
    # (AVX-512 BF16/AMX: 1.4-1.9x the tokens/s of float32 on the 2-core Zen 4 here).
    bf16: bool = True
    # The template's decisions the LMS learns (written to the manifest's `decoding`): write a
    # value instead of copying it (with constrained), and "no call" as the answer's first decision
    # (no-call examples then train it).
    write_values: bool = False
    no_call: bool = False
    # Checkpoints kept as a history (step-NNNNNN/); LoRA runs save the adapter weights only.
    keep_checkpoints: int = 3


def lms_prompt_ids(tokenizer, query: str, candidates: list[Tool], num_soft: int) -> tuple[list[int], list[int]]:
    """The shared-prefix ids and the job-prompt ids, encoded exactly as the decoder and the engine
    encode them at inference: the tokenizer's chat template when it has one, and the candidate
    schemas in the canonical order training writes to the manifest (`prompt_order: canonical`)."""
    prefix = tokenizer.encode(lms_shared_prefix(tokenizer), add_special_tokens=False)
    return prefix, lms_job_ids(tokenizer, query, candidates, num_soft, "canonical")


def build_sequence(
    machine: TemplateMachine,
    tokenizer,
    query: str,
    candidates: list[Tool],
    gold: list[Call],
    soft: torch.Tensor,
    num_soft: int,
    constrained: bool = False,
) -> LMSSequence:
    prefix, prompt = lms_prompt_ids(tokenizer, query, candidates, num_soft)
    record = machine.teacher(candidates, gold, source=query if constrained else None)
    ids = prefix + prompt + record.ids
    generated = [False] * (len(prefix) + len(prompt)) + record.generated
    return LMSSequence(ids, generated, soft, record.allowed if constrained else None)


def _batch_inputs(model, projector: SoftTokenProjector, seqs: list[LMSSequence], soft_id: int, pad_id: int, device):
    """Right-padded ids, loss-target flags and input embeddings (soft-token slots filled)."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    targets = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, : len(s.ids)] = torch.tensor(s.ids)
        targets[r, : len(s.ids)] = torch.tensor(s.generated)
    ids, targets = ids.to(device), targets.to(device)
    soft = projector(torch.stack([s.soft for s in seqs]).to(device))  # (B, n, d)
    return ids, targets, fill_soft_slots(model.get_input_embeddings(), ids, soft_id, pad_id, soft)


def shared_prefix_length(seqs: list[LMSSequence]) -> int:
    """How many leading tokens every sequence shares, stopping before the first loss target."""
    first = seqs[0].ids
    length = min(len(s.ids) for s in seqs)
    for s in seqs:
        length = min(length, s.generated.index(True) if True in s.generated else len(s.ids))
        for i in range(length):
            if s.ids[i] != first[i]:
                length = i
                break
    return length


def selective_loss(
    model, projector, seqs: list[LMSSequence], soft_id: int, pad_id: int, device, share_prefix: bool = True
) -> torch.Tensor:
    """Cross-entropy on generated tokens only (position t-1 predicts token t).

    Every sequence opens with the same system prefix. As at inference, its keys and values are
    computed once (batch of one) and repeated for the batch: a quarter of the tokens of a demo
    sequence, run once instead of once per row. The loss is the same either way."""
    ids, targets, embeds = _batch_inputs(model, projector, seqs, soft_id, pad_id, device)
    # A peft model's `base_model` is its LoRA wrapper (a whole causal LM); the decoder stack that
    # returns hidden states is one level further in, with the LoRA layers injected in place.
    core = model.get_base_model() if is_lora(model) else model
    # No attention mask: rows are right-padded, so under causal attention no real token ever sees
    # a pad (pads only follow it), and pads are never targets. Passing the padding mask would
    # force attention off its fused causal kernel onto a materialised-mask path, about 2.5x slower
    # per step here.
    shared = max(0, shared_prefix_length(seqs) - 1) if share_prefix and len(seqs) > 1 else 0
    if shared > 0:
        cache = DynamicCache(config=model.config)
        core.base_model(inputs_embeds=embeds[:1, :shared], **cache_kwargs(cache), use_cache=True)
        cache.batch_repeat_interleave(len(seqs))
        hidden = core.base_model(inputs_embeds=embeds[:, shared:], **cache_kwargs(cache), use_cache=True).last_hidden_state
    else:
        hidden = core.base_model(inputs_embeds=embeds).last_hidden_state
    predict = targets[:, shared + 1 :]
    h = hidden[:, :-1][predict]
    logits = core.get_output_embeddings()(h).float()
    if all(s.allowed is not None for s in seqs):
        logits = logits.masked_fill(~_allowed_mask(seqs, logits.shape[1], logits.device), float("-inf"))
    return F.cross_entropy(logits, ids[:, shared + 1 :][predict])


def _allowed_mask(seqs: list[LMSSequence], vocab: int, device) -> torch.Tensor:
    """(targets, vocab) bool: row t allows what inference allowed at target t (rows in the order
    boolean indexing yields them: sequence by sequence, position by position)."""
    rows, cols, free = [], [], []
    offset = 0
    for s in seqs:
        r, c, f = _sparse_allowed(s)
        rows.append(r + offset)
        cols.append(c)
        free.append(f)
        offset += f.numel()
    mask = torch.zeros(offset, vocab, dtype=torch.bool)
    cols_all = torch.cat(cols)
    keep = cols_all < vocab
    mask[torch.cat(rows)[keep], cols_all[keep]] = True
    mask[torch.cat(free)] = True
    return mask.to(device)


def _sparse_allowed(seq: LMSSequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, col) index pairs of a sequence's allowed sets and its unrestricted rows, built once
    per sequence (the per-step Python loop would otherwise cost more than the model)."""
    if seq.sparse_allowed is None:
        assert seq.allowed is not None
        rows = [r for r, choices in enumerate(seq.allowed) if choices is not None for _ in choices]
        cols = [c for choices in seq.allowed if choices is not None for c in choices]
        free = torch.tensor([choices is None for choices in seq.allowed], dtype=torch.bool)
        seq.sparse_allowed = (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), free)
    return seq.sparse_allowed


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def apply_lora(model, cfg: LMSTrainConfig):
    """Wrap ``model`` in LoRA adapters on every attention and MLP projection (Llama, Qwen, Gemma
    names) of every layer, or of the top ``cfg.lora_layers``; the base weights are frozen. The
    projector is trained in full next to it."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise ValueError(f"LoRA: the LMS has none of the projections {LORA_TARGETS}")
    layers: list[int] | None = None
    if cfg.lora_layers is not None:
        total = int(model.config.num_hidden_layers)
        if not 1 <= cfg.lora_layers <= total:
            raise ValueError(f"lms.lora_layers must be between 1 and the LMS's {total} layers, got {cfg.lora_layers}")
        layers = list(range(total - cfg.lora_layers, total))
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, target_modules=targets, lora_dropout=0.0,
                        layers_to_transform=layers)
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def _soft_slot_id(tokenizer, model) -> int:
    """The slot id training uses; the tokenizer and the model must already have it (ensure_soft_slot)."""
    if SOFT_TOKEN not in tokenizer.get_vocab():
        raise ValueError(f"the LMS tokenizer has no {SOFT_TOKEN} token: call hyfunc.models.soft_slot.ensure_soft_slot first")
    soft_id = int(tokenizer.convert_tokens_to_ids(SOFT_TOKEN))
    rows = int(model.get_input_embeddings().weight.shape[0])
    if soft_id >= rows:
        raise ValueError(f"{SOFT_TOKEN} has id {soft_id} but the LMS embedding table has {rows} rows: call ensure_soft_slot(tokenizer, model)")
    return soft_id


def _lr_at(step: int, cfg: LMSTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_lms(
    model,
    projector: SoftTokenProjector,
    tokenizer,
    sequences: list[LMSSequence],
    cfg: LMSTrainConfig,
    checkpoint_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
    stop_at: int | None = None,
) -> list[float]:
    """Train in place; resumes from checkpoint_dir when a checkpoint is there. Returns losses.

    ``stop_at`` ends this invocation early at that step (after checkpointing), as an
    interruption would; the schedule still follows ``cfg.steps``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    if cfg.lora and not is_lora(model):
        model = apply_lora(model, cfg)
    model.to(device).train()
    projector.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad] + list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    soft_id = _soft_slot_id(tokenizer, model)
    pad_id = tokenizer.pad_token_id or 0
    start_step = 0
    losses: list[float] = []
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None:
        state = torch.load(latest / "trainer_state.pt", weights_only=False)
        load_trained_weights(model, projector, latest)
        optimizer.load_state_dict(state["optimizer"])
        start_step, losses = state["step"], state["losses"]
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    use_bf16 = cfg.bf16 and bf16_available(device)
    autocast_device = "cuda" if device.startswith("cuda") else "cpu"
    # Similar lengths in a batch waste less compute on padding.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
    buckets = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    bar = tqdm(range(start_step, cfg.steps), desc="lms", disable=not progress, initial=start_step, total=cfg.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        optimizer.zero_grad()
        total = 0.0
        for _ in range(cfg.grad_accum):
            batch = [sequences[i] for i in rng.choice(buckets)]
            with torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=use_bf16):
                loss = selective_loss(model, projector, batch, soft_id, pad_id, device) / cfg.grad_accum
            loss.backward()
            total += float(loss.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or step + 1 == stop_at:
            save_checkpoint(model, projector, optimizer, step + 1, losses, rng, checkpoint_dir, cfg.keep_checkpoints)
        if stop_at is not None and step + 1 >= stop_at:
            break
    model.eval()
    projector.eval()
    return losses


def bf16_available(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    # oneDNN runs bf16 matmuls natively with AVX-512 BF16 or AMX; elsewhere it emulates them slower
    # than float32.
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def trained_state(model) -> dict[str, torch.Tensor]:
    """What LoRA training changed: the adapter weights only (a few MB, not the 540 MB base)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trained_weights(model, projector: SoftTokenProjector, directory: Path) -> None:
    """Load a checkpoint written by `save_checkpoint` (or by the older whole-model format)."""
    if (directory / "trained.safetensors").is_file():
        state = load_file(str(directory / "trained.safetensors"))
        missing = [name for name in state if name not in dict(model.named_parameters()) and name not in model.state_dict()]
        if missing:
            raise ValueError(f"checkpoint {directory} does not fit this LMS: unknown weights {missing[:3]}")
        model.load_state_dict(state, strict=False)
    else:
        load_model(model, str(directory / "lms.safetensors"))
    projector.load_state_dict(load_file(str(directory / "projector" / "model.safetensors")))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under ``directory`` (step-NNNNNN/ with its trainer state),
    or ``directory`` itself when it holds an older single checkpoint."""
    if not directory.is_dir():
        return None
    steps = sorted(d for d in directory.glob("step-*") if (d / "trainer_state.pt").is_file())
    if steps:
        return steps[-1]
    return directory if (directory / "trainer_state.pt").is_file() else None


def save_checkpoint(
    model, projector, optimizer, step: int, losses: list[float], rng: random.Random, directory: Path, keep: int = 3
) -> Path:
    """One checkpoint in ``directory/step-NNNNNN/`` (written to a temporary name, then renamed, so
    an interrupted save never leaves a half checkpoint), older ones pruned to the last ``keep``."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    tmp = directory / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if is_lora(model):
        save_file(trained_state(model), str(tmp / "trained.safetensors"))
    else:  # a whole model may tie its embedding and head: save_model writes shared tensors once
        save_model(model, str(tmp / "lms.safetensors"))
    save_module(projector, projector.config_dict(), tmp / "projector")
    torch.save(
        {"optimizer": optimizer.state_dict(), "step": step, "losses": losses, "rng": rng.getstate(), "torch_rng": torch.get_rng_state()},
        tmp / "trainer_state.pt",
    )
    (tmp / "progress.json").write_text(json.dumps({"step": step, "loss": losses[-1] if losses else None}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(d for d in directory.glob("step-*") if d.is_dir())[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    (directory / "progress.json").write_text(json.dumps({"step": step, "loss": losses[-1] if losses else None, "checkpoint": final.name}))
    return final
