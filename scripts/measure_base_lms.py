"""One honest measurement of a pulled base LMS against the shipped demo LMS, on this machine.

    python scripts/measure_base_lms.py --base-models DIR [--limit 48] [--sft-steps 3]

DIR is a models directory whose LMS is a `base:` part (e.g. the demo retriever with
`lms_path: base:smollm2-135m-instruct` and a zero projector). Both cascades decode the same
held-out demo requests (the `hyfunc eval demo` set), then time calls at batch 1, interleaved
request by request so that both see the same machine load; the report gives exact / function
accuracy and p50 ms per call for each and their ratio. Then it times LoRA selective-SFT steps (batch 4) on the base and extrapolates what
the demo recipe's step count would cost here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def compare(base_dir: str, limit: int, latency_n: int) -> dict:
    """Accuracy on ``limit`` held-out requests (batches of 16: greedy results equal batch 1's), then
    p50 ms per call at batch 1 on the first ``latency_n``, the two cascades interleaved request by
    request so that both see the same machine load."""
    from hyfunc.cascade import Cascade
    from hyfunc.config import load_config
    from hyfunc.data.demo_task import generate_demo_examples
    from hyfunc.eval.demo import evaluate_demo
    from hyfunc.schema import CallRequest

    cascades = {
        "shipped demo LMS (1.8M, trained)": Cascade.load(load_config()),
        "base LMS (untuned, zero projector)": Cascade.load(load_config(overrides={"models.dir": base_dir})),
    }
    report: dict = {}
    for name, cascade in cascades.items():
        metrics = evaluate_demo(cascade, n=limit, seed=1, batch_size=16, progress=False)  # `hyfunc eval demo`'s set
        report[name] = {k: metrics[k] for k in ("exact_match", "function_accuracy", "no_call_accuracy", "n")}
        print(f"[measure] {name}: {report[name]}", flush=True)
    examples = generate_demo_examples("heldout", latency_n, 1)
    totals: dict[str, list[float]] = {name: [] for name in cascades}
    for i, ex in enumerate(examples):
        for name, cascade in cascades.items():
            result = cascade.run([CallRequest(id=str(i), query=ex.query, tools=ex.tools)])[0]
            totals[name].append(result.timings_ms.total)
        print(f"[measure] batch-1 latency {i + 1}/{len(examples)}", flush=True)
    for name in cascades:
        report[name][f"p50_ms_per_call (batch 1, n={latency_n})"] = round(statistics.median(totals[name]), 1)
    a, b = (statistics.median(totals[name]) for name in cascades)
    report["p50 ratio (base / shipped)"] = round(b / a, 1)
    return report


def time_lora_sft(base_dir: str, steps: int, batch: int = 4) -> dict:
    from hyfunc.cascade.template import MachineLimits, TemplateMachine
    from hyfunc.data.demo_task import generate_demo_examples
    from hyfunc.models.bundle import ModelBundle
    from hyfunc.models.projector import ProjectorConfig, SoftTokenProjector
    from hyfunc.training.lms import LMSTrainConfig, apply_lora, build_sequence, selective_loss

    bundle = ModelBundle.load(base_dir)
    tokenizer, lms = bundle.lms_tokenizer, bundle.lms
    machine = TemplateMachine(tokenizer, MachineLimits())
    examples = [ex for ex in generate_demo_examples("train", 64, 0) if ex.answers][: batch * (steps + 1)]
    cfg = LMSTrainConfig(lora=True, lora_rank=16, constrained=True)
    model = apply_lora(lms, cfg).train()
    projector = SoftTokenProjector(ProjectorConfig(input_dim=384, output_dim=lms.config.hidden_size, hidden_dim=256))
    def candidates(ex):  # the gold tools plus others, three in all (top_k), as training sees them
        gold = {c.name for c in ex.answers}
        return ([t for t in ex.tools if t.name in gold] + [t for t in ex.tools if t.name not in gold])[: max(3, len(gold))]

    seqs = [
        build_sequence(machine, tokenizer, ex.query, candidates(ex), ex.answers, torch.randn(384), 1, constrained=True)
        for ex in examples
    ]
    params = [p for p in model.parameters() if p.requires_grad] + list(projector.parameters())
    trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    soft_id, pad_id = tokenizer.convert_tokens_to_ids("<|soft|>"), tokenizer.pad_token_id or 0
    times = []
    for step in range(steps + 1):  # the first step warms up allocators and is not counted
        batch_seqs = seqs[step * batch : (step + 1) * batch]
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = selective_loss(model, projector, batch_seqs, soft_id, pad_id, "cpu")
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    per_step = statistics.median(times)
    tokens = statistics.mean(len(s.ids) for s in seqs)
    # The demo recipe: 3,000 steps of 16 sequences = 12,000 steps of 4.
    demo_hours = per_step * 3000 * (16 / batch) / 3600
    return {
        "trainable_parameters (LoRA r=16 + projector)": trainable,
        "mean sequence tokens": round(tokens, 1),
        f"seconds per LoRA SFT step (batch {batch})": round(per_step, 2),
        "steps timed": len(times),
        "demo recipe (3,000 steps x 16 sequences) here, hours": round(demo_hours, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-models", required=True)
    parser.add_argument("--limit", type=int, default=48, help="held-out requests scored")
    parser.add_argument("--latency-n", type=int, default=8, help="requests timed at batch 1")
    parser.add_argument("--sft-steps", type=int, default=3)
    args = parser.parse_args()
    report = {"threads": torch.get_num_threads()}
    started = time.time()
    report["eval"] = compare(args.base_models, args.limit, args.latency_n)
    report["lora_sft"] = time_lora_sft(args.base_models, args.sft_steps)
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
