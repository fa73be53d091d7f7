#!/usr/bin/env python
"""Self-check of the vLLM intent backend on your GPU: same soft tokens as transformers, and timing.

    pip install -e ".[vllm]"
    python scripts/vllm_selfcheck.py --models models/demo        # or any models dir with a causal LML

Passes when every soft token and function embedding has cosine >= 0.99 to the transformers
backend's (bf16 on both sides), and prints the per-batch time of each backend.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("vllm self-check needs a CUDA GPU", file=sys.stderr)
        return 2
    from hyfunc.backends.vllm_intent import VLLMIntentEncoder
    from hyfunc.cascade.intent import IntentEncoder
    from hyfunc.data.demo_task import demo_tools, generate_demo_examples
    from hyfunc.models.bundle import ModelBundle, resolve_part

    bundle = ModelBundle.load(args.models, device="cuda", dtype="bfloat16")
    kind = bundle.manifest.intent_kind
    hf = IntentEncoder(bundle.intent_model, bundle.intent_tokenizer, kind, bundle.device)
    vl = VLLMIntentEncoder(resolve_part(bundle.directory, bundle.manifest.intent_path), kind=kind)
    queries = [ex.query for ex in generate_demo_examples("heldout", args.batch, 1)]
    tools = demo_tools()
    ok = True
    for name, a, b in (
        ("soft tokens", hf.soft_tokens(queries).soft_tokens, vl.soft_tokens(queries).soft_tokens),
        ("function embeddings", hf.function_embeddings(tools), vl.function_embeddings(tools)),
    ):
        cos = torch.nn.functional.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)
        print(f"{name}: min cosine {cos.min():.4f}, mean {cos.mean():.4f}")
        ok &= bool(cos.min() >= 0.99)
    for label, enc in (("transformers", hf), ("vllm", vl)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            enc.soft_tokens(queries)
        torch.cuda.synchronize()
        print(f"{label}: {(time.perf_counter() - start) / 5 * 1000:.1f} ms per batch of {len(queries)}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
