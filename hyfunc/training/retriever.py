"""`hyfunc train retriever`: InfoNCE on (soft token, function embedding) pairs.

Negatives: every other positive in the batch (in-batch) plus each record's other candidate
tools (hard negatives). Reports recall@1 / recall@k over each held-out record's candidates and
calibrates the relevance threshold on held-out data that includes queries no tool fits.
"""

from __future__ import annotations

import random

import torch
from tqdm import tqdm

from hyfunc.data.loaders import Example
from hyfunc.models.retriever import Retriever, RetrieverConfig, info_nce_loss
from hyfunc.training.embed import EmbeddingCache, query_vectors, tool_vectors


def _pairs(examples: list[Example]) -> list[tuple[int, int]]:
    """(example index, gold tool index) for every gold call."""
    out = []
    for i, ex in enumerate(examples):
        names = [t.name for t in ex.tools]
        for call in ex.answers:
            out.append((i, names.index(call.name)))
    return out


def train_retriever(
    examples: list[Example],
    cache: EmbeddingCache,
    config: RetrieverConfig,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    gate_weight: float = 0.5,
) -> tuple[Retriever, float]:
    """InfoNCE for ranking, plus a relevance-gate term when no-call examples exist: a logistic
    loss that pushes the gold tool's score above a learned bias and every tool's score of a
    query that no tool fits below it. InfoNCE alone only orders tools within a query; the gate
    needs scores that mean the same across queries."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = Retriever(config)
    bias = torch.nn.Parameter(torch.tensor(0.3))
    optimizer = torch.optim.AdamW([*model.parameters(), bias], lr=lr, weight_decay=0.01)
    pairs = _pairs(examples)
    no_calls = [ex for ex in examples if not ex.answers]
    if not pairs:
        raise ValueError("no examples with gold calls to train the retriever on")
    loss_value = float("nan")
    for _ in tqdm(range(steps), desc="retriever", disable=not progress):
        batch = rng.sample(pairs, min(batch_size, len(pairs)))
        pool: dict[str, int] = {}
        pool_tools = []
        for i, _ in batch:
            for tool in examples[i].tools:
                h = tool.content_hash()
                if h not in pool:
                    pool[h] = len(pool_tools)
                    pool_tools.append(tool)
        q = model.encode_queries(query_vectors(cache, [examples[i].query for i, _ in batch]))
        k = model.encode_keys(tool_vectors(cache, pool_tools))
        positive = torch.tensor([pool[examples[i].tools[t].content_hash()] for i, t in batch])
        valid = torch.ones(len(batch), len(pool_tools), dtype=torch.bool)
        for row, (i, t) in enumerate(batch):
            # another gold tool of the same multi-call query is not a negative
            for call in examples[i].answers:
                other = next(tool for tool in examples[i].tools if tool.name == call.name)
                if other.name != examples[i].tools[t].name:
                    valid[row, pool[other.content_hash()]] = False
        loss = info_nce_loss(q, k, positive, config.temperature, valid)
        if no_calls and gate_weight > 0:
            negatives = rng.sample(no_calls, min(len(no_calls), max(1, len(batch) // 4)))
            gold_scores = (q * k[positive]).sum(dim=-1)
            nq = model.encode_queries(query_vectors(cache, [ex.query for ex in negatives]))
            none_scores = torch.stack(
                [(model.encode_keys(tool_vectors(cache, ex.tools)) @ nq[j]).max() for j, ex in enumerate(negatives)]
            )
            logits = torch.cat([gold_scores, none_scores]) - bias
            labels = torch.cat([torch.ones_like(gold_scores), torch.zeros_like(none_scores)])
            weights = torch.cat([torch.full_like(gold_scores, 1.0), torch.full_like(none_scores, len(batch) / len(negatives))])
            loss = loss + gate_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                logits / 0.05, labels, weight=weights / weights.mean()
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.item())
    return model.eval(), loss_value


@torch.no_grad()
def best_scores(model: Retriever, examples: list[Example], cache: EmbeddingCache) -> list[list[float]]:
    """Each example's candidate scores (in its tools' order)."""
    q = model.encode_queries(query_vectors(cache, [ex.query for ex in examples]))
    out = []
    for row, ex in enumerate(examples):
        k = model.encode_keys(tool_vectors(cache, ex.tools))
        out.append((k @ q[row]).tolist())
    return out


def evaluate_retriever(
    model: Retriever, examples: list[Example], cache: EmbeddingCache, k: int, max_false_no_call: float | None = None
) -> tuple[float, float, float, float]:
    """recall@1, recall@k over gold calls, and the calibrated threshold with its gate accuracy.

    ``max_false_no_call``: the gate shares irrelevance with an LMS that can answer "no call", so
    it only refuses what is clearly off: the threshold is the highest that refuses at most this
    share of the held-out call queries (and at most the balanced-accuracy threshold)."""
    scores = best_scores(model, examples, cache)
    hits1 = hitsk = total = 0
    call_best, none_best = [], []
    for ex, s in zip(examples, scores, strict=True):
        order = sorted(range(len(s)), key=lambda j: -s[j])
        names = [ex.tools[j].name for j in order]
        if ex.answers:
            call_best.append(max(s))
            gold = {c.name for c in ex.answers}
            top_needed = len(gold)
            for name in gold:
                total += 1
                hits1 += name in names[:top_needed]
                hitsk += name in names[: max(k, top_needed)]
        else:
            none_best.append(max(s))
    threshold, accuracy = calibrate_threshold(call_best, none_best)
    if max_false_no_call is not None and call_best:
        threshold = min(threshold, recall_threshold(call_best, max_false_no_call))
        kept = sum(s >= threshold for s in call_best)
        rejected = sum(s < threshold for s in none_best)
        accuracy = (kept + rejected) / (len(call_best) + len(none_best))
    return hits1 / max(total, 1), hitsk / max(total, 1), threshold, accuracy


def no_call_ceiling(model: Retriever, examples: list[Example], cache: EmbeddingCache, max_forced: float) -> float | None:
    """The best score at or above which the LMS must call (``cascade.no_call_ceiling``): just
    above all but ``max_forced`` of the held-out no-call queries' best scores, so that at most
    that share of them would be forced into a call. None without held-out no-call queries."""
    none_best = sorted((max(s) for ex, s in zip(examples, best_scores(model, examples, cache), strict=True)
                        if not ex.answers and s), reverse=True)
    if not none_best:
        return None
    allowed = int(max_forced * len(none_best))  # this many may lie at or above the ceiling
    return none_best[allowed] + 1e-6 if allowed < len(none_best) else none_best[-1]


def recall_threshold(call_scores: list[float], max_refused: float) -> float:
    """The highest threshold that refuses at most ``max_refused`` of ``call_scores``."""
    ordered = sorted(call_scores)
    refused = int(max_refused * len(ordered))  # this many may fall under the threshold
    return ordered[refused] - 1e-6 if refused < len(ordered) else ordered[-1]


def calibrate_threshold(call_scores: list[float], none_scores: list[float]) -> tuple[float, float]:
    """The threshold with the best *balanced* accuracy between "some tool fits" and "none fits"
    (the mean of the two recalls), placed midway in the gap it picks; returns (threshold, plain
    accuracy at it). Balanced, because no-call queries are the minority and plain accuracy would
    trade them away — forcing a call when none fits is the failure the gate exists to prevent."""
    if not none_scores:
        return (min(call_scores) - 1e-3 if call_scores else -1.0), 1.0
    if not call_scores:
        return max(none_scores) + 1e-3, 1.0
    points = sorted(set(call_scores) | set(none_scores))
    candidates = [points[0] - 1e-3] + [(a + b) / 2 for a, b in zip(points, points[1:], strict=False)] + [points[-1] + 1e-3]
    best = (-1.0, candidates[0], 0.0)
    for t in candidates:
        kept = sum(s >= t for s in call_scores) / len(call_scores)
        rejected = sum(s < t for s in none_scores) / len(none_scores)
        balanced = (kept + rejected) / 2
        if balanced > best[0]:
            plain = (kept * len(call_scores) + rejected * len(none_scores)) / (len(call_scores) + len(none_scores))
            best = (balanced, t, plain)
    return best[1], best[2]


# --------------------------------------------------------------------------- general retriever


def split_by_tool(examples: list[Example], heldout_share: float = 0.1, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Train / held-out with held-out *tools*: an example whose gold names a held-out tool is
    held out, so held-out recall measures tools the retriever never trained on (no-call examples
    are split at random in the same share)."""
    rng = random.Random(seed)
    gold_tools = sorted({c.name for ex in examples for c in ex.answers})
    held_tools = set(rng.sample(gold_tools, max(1, int(len(gold_tools) * heldout_share)))) if gold_tools else set()
    train, held = [], []
    for ex in examples:
        if ex.answers:
            (held if any(c.name in held_tools for c in ex.answers) else train).append(ex)
        else:
            (held if rng.random() < heldout_share else train).append(ex)
    return train, held


def train_general_retriever(
    examples: list[Example],
    cache: EmbeddingCache,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-3,
    hidden_dim: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Retriever, dict]:
    """The residual (identity-at-init) retriever trained on general data with the usual recipe;
    the relevance threshold is calibrated on held-out tools and held-out no-call queries. The
    report holds recall and gate accuracy before training (plain cosine) and after."""
    from hyfunc.models.retriever import identity_retriever

    train, held = split_by_tool(examples, seed=seed)
    dim = int(query_vectors(cache, [examples[0].query]).shape[1])
    config = RetrieverConfig(input_dim=dim, hidden_dim=hidden_dim, tower="residual")
    model, loss = train_retriever(train, cache, config, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    report = {"train_examples": len(train), "heldout_examples": len(held),
              "heldout_no_call": sum(not ex.answers for ex in held), "steps": steps, "final_loss": loss}
    for label, module in (("untrained", identity_retriever(dim, hidden_dim)), ("trained", model)):
        r1, r3, threshold, gate = evaluate_retriever(module, held, cache, 3)
        report[label] = {"recall_at_1": round(r1, 4), "recall_at_3": round(r3, 4), "threshold": threshold, "gate_accuracy": round(gate, 4)}
    return model, report


def intent_encoder_for(models_dir: str, device: str = "cpu"):
    """The intent model of a models directory alone (no LMS): (IntentEncoder, its path as written)."""
    from pathlib import Path

    from hyfunc.models.bundle import PACKAGE_PREFIX, Manifest, resolve_part
    from hyfunc.training.pipeline import Recipe, load_intent

    models = Path(models_dir)
    manifest = Manifest.read(models)
    path = manifest.intent_path
    if not path.startswith(PACKAGE_PREFIX):
        path = str(resolve_part(models, path))
    return load_intent(Recipe.from_dict({"intent": path, "intent_kind": manifest.intent_kind}), device), path


def main(argv: list[str] | None = None) -> int:
    """`python -m hyfunc.training.retriever --out DIR [--data SEAL_DIR] [--steps N]`: the residual
    retriever on Seal-Tools training data (BFCL excluded), the intent model of --models."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description="train the identity-initialised retriever on general (Seal-Tools) data")
    parser.add_argument("--out", required=True, help="retriever directory to write (config.json, model.safetensors, report.json)")
    parser.add_argument("--data", help="Seal-Tools_Dataset directory (default: $HYFUNC_SEAL_DIR, else data/seal/)")
    parser.add_argument("--models", default="models/demo", help="models directory whose intent model embeds (default models/demo)")
    parser.add_argument("--work-dir", default="runs/general_retriever", help="embedding cache (resumable)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--per-tool", type=int, default=2, help="generated queries per tool")
    parser.add_argument("--limit", type=int, help="a random N of the examples (a short CPU run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these matrices are small, and on a shared CPU more threads only contend)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hyfunc.data.seal_tools import seal_training_examples
    from hyfunc.models.bundle import save_module
    from hyfunc.training.embed import embed_all

    encoder, intent_path = intent_encoder_for(args.models)
    examples, provenance = seal_training_examples(args.data, per_tool=args.per_tool)
    if args.limit:
        examples = random.Random(0).sample(examples, min(args.limit, len(examples)))
    cache = EmbeddingCache(Path(args.work_dir) / "embeddings")
    embed_all(encoder, cache, [ex.query for ex in examples], [t for ex in examples for t in ex.tools])
    model, report = train_general_retriever(examples, cache, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out)
    save_module(model, model.config_dict(), out)
    report.update({"data": provenance, "intent": intent_path, "threshold": report["trained"]["threshold"]})
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
