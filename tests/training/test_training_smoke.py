"""Training on tiny models: loss falls, checkpoints reload identically, selective-SFT masks."""

from __future__ import annotations

import copy

import pytest
import torch

from hyfunc.cascade.template import TemplateMachine
from hyfunc.data.demo_task import generate_demo_examples
from hyfunc.models.bundle import ModelBundle
from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
from hyfunc.training.lms import LMSTrainConfig, build_sequence, selective_loss, train_lms


@pytest.fixture(scope="module")
def bundle(tiny_models_dir):
    return ModelBundle.load(tiny_models_dir)


@pytest.fixture(scope="module")
def sequences(bundle):
    machine = TemplateMachine(bundle.lms_tokenizer)
    examples = [ex for ex in generate_demo_examples("train", 40, 3) if ex.answers][:8]
    torch.manual_seed(0)
    return [
        build_sequence(machine, bundle.lms_tokenizer, ex.query, ex.tools, ex.answers, torch.randn(bundle.intent_dim), 1)
        for ex in examples
    ]


def test_selective_mask_equals_teacher_split(bundle, sequences):
    """The loss targets are exactly the tokens the teacher marks as generated, token for token."""
    machine = TemplateMachine(bundle.lms_tokenizer)
    ex = next(ex for ex in generate_demo_examples("train", 40, 3) if ex.answers)
    seq = build_sequence(machine, bundle.lms_tokenizer, ex.query, ex.tools, ex.answers, torch.zeros(bundle.intent_dim), 1)
    record = machine.teacher(ex.tools, ex.answers)
    tail = len(record.ids)
    assert seq.ids[-tail:] == record.ids
    assert seq.generated[-tail:] == record.generated
    assert not any(seq.generated[:-tail]), "prompt tokens are never targets"
    assert any(record.generated) and not all(record.generated)


def test_loss_falls_and_checkpoint_reloads_identically(bundle, sequences, tmp_path):
    lms = copy.deepcopy(bundle.lms).float()
    projector = SoftTokenProjector(ProjectorConfig(input_dim=bundle.intent_dim, output_dim=bundle.lms_dim, hidden_dim=32))
    soft_id = bundle.lms_tokenizer.convert_tokens_to_ids("<|soft|>")
    pad = bundle.lms_tokenizer.pad_token_id or 0
    with torch.no_grad():
        before = float(selective_loss(lms, projector, sequences, soft_id, pad, "cpu"))
    cfg = LMSTrainConfig(steps=30, batch_size=4, lr=3e-3, warmup=3, save_every=15)
    losses = train_lms(lms, projector, bundle.lms_tokenizer, sequences, cfg, tmp_path / "ckpt", progress=False)
    with torch.no_grad():
        after = float(selective_loss(lms, projector, sequences, soft_id, pad, "cpu"))
    assert len(losses) == 30
    assert after < before * 0.8, (before, after)

    # A fresh model resumed from the final checkpoint gives identical outputs.
    lms2 = copy.deepcopy(bundle.lms).float()
    projector2 = SoftTokenProjector(ProjectorConfig(input_dim=bundle.intent_dim, output_dim=bundle.lms_dim, hidden_dim=32))
    train_lms(lms2, projector2, bundle.lms_tokenizer, sequences, cfg, tmp_path / "ckpt", progress=False)
    with torch.no_grad():
        again = float(selective_loss(lms2, projector2, sequences, soft_id, pad, "cpu"))
    assert again == pytest.approx(after, abs=1e-6)
    for a, b in zip(lms.state_dict().values(), lms2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_continues_from_checkpoint(bundle, sequences, tmp_path):
    """An interrupted run (10 of 20 steps) resumed to 20 equals an uninterrupted 20-step run."""
    projector_cfg = ProjectorConfig(input_dim=bundle.intent_dim, output_dim=bundle.lms_dim, hidden_dim=32)
    torch.manual_seed(1)
    straight_lms, straight_proj = copy.deepcopy(bundle.lms).float(), SoftTokenProjector(projector_cfg)
    init_proj = copy.deepcopy(straight_proj.state_dict())
    cfg = LMSTrainConfig(steps=20, batch_size=4, lr=3e-3, warmup=2, save_every=100)
    full = train_lms(straight_lms, straight_proj, bundle.lms_tokenizer, sequences, cfg, tmp_path / "a", progress=False)

    half_lms, half_proj = copy.deepcopy(bundle.lms).float(), SoftTokenProjector(projector_cfg)
    half_proj.load_state_dict(init_proj)
    train_lms(half_lms, half_proj, bundle.lms_tokenizer, sequences, cfg, tmp_path / "b", progress=False, stop_at=10)
    resumed_lms, resumed_proj = copy.deepcopy(bundle.lms).float(), SoftTokenProjector(projector_cfg)
    resumed = train_lms(resumed_lms, resumed_proj, bundle.lms_tokenizer, sequences, cfg, tmp_path / "b", progress=False)
    assert len(resumed) == 20
    assert resumed[-1] == pytest.approx(full[-1], rel=1e-4)


def test_shared_prefix_loss_equals_full_loss(bundle, sequences):
    """Running the common system prefix once and repeating its KV changes neither loss nor gradients."""
    from hyfunc.training.lms import shared_prefix_length

    lms = copy.deepcopy(bundle.lms).float()
    projector = SoftTokenProjector(ProjectorConfig(input_dim=bundle.intent_dim, output_dim=bundle.lms_dim, hidden_dim=32))
    soft_id = bundle.lms_tokenizer.convert_tokens_to_ids("<|soft|>")
    pad = bundle.lms_tokenizer.pad_token_id or 0
    assert shared_prefix_length(sequences) > 10
    results = []
    for share in (False, True):
        lms.zero_grad()
        loss = selective_loss(lms, projector, sequences, soft_id, pad, "cpu", share_prefix=share)
        loss.backward()
        results.append((loss.item(), lms.get_input_embeddings().weight.grad.clone()))
    (full, full_grad), (shared, shared_grad) = results
    assert shared == pytest.approx(full, rel=1e-5)
    assert torch.allclose(full_grad, shared_grad, atol=1e-6)


def test_intent_lm_from_scratch_learns_and_encodes(bundle):
    """The from-scratch causal LML (the intent-model comparison's challenger) lowers its LM loss
    and serves soft tokens through the same IntentEncoder as any causal checkpoint."""
    import torch.nn.functional as F

    from hyfunc.cascade.intent import IntentEncoder
    from hyfunc.training.intent_lm import IntentLMConfig, intent_corpus, train_intent_lm
    from hyfunc.training.pipeline import LMSArch

    examples = generate_demo_examples("train", 30, 5)
    texts = intent_corpus(examples)
    assert any("<|im_start|>user" in t for t in texts) and len(texts) > len(examples)
    tokenizer = bundle.lms_tokenizer

    def lm_loss(model) -> float:
        ids = torch.tensor([tokenizer.encode(texts[0], add_special_tokens=False)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        return float(F.cross_entropy(logits, ids[0, 1:]))

    arch = LMSArch(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    cfg = IntentLMConfig(arch=arch, steps=40, batch_size=8, lr=5e-3)
    untrained = train_intent_lm(texts, tokenizer, IntentLMConfig(arch=arch, steps=0), progress=False)
    trained = train_intent_lm(texts, tokenizer, cfg, progress=False)
    assert lm_loss(trained) < lm_loss(untrained) - 0.5
    encoder = IntentEncoder(trained, tokenizer, "causal", torch.device("cpu"))
    out = encoder.soft_tokens([examples[0].query, examples[1].query])
    assert out.soft_tokens.shape == (2, 32) and torch.isfinite(out.soft_tokens).all()
