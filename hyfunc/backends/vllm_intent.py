"""vLLM backend for the intent model (LML): the large model's single pass on a GPU engine.

The LML is the big model of the cascade (8B in the paper), so it is the part worth moving to
vLLM. vLLM's pooling runner returns per-token final hidden states (`token_embed`); the soft
token is the last prompt position and a function embedding the mean over the tool text —
exactly what `hyfunc.cascade.intent.IntentEncoder` computes with transformers, so the two are
interchangeable behind the same interface (`soft_tokens`, `function_embeddings`).
The LMS stays on transformers: its template machine appends chunks to a live KV cache, which
vLLM's request API does not expose.

`vllm` is an optional extra (`pip install -e ".[vllm]"`), imported only here.
`scripts/vllm_selfcheck.py` compares this backend with the transformers one on your GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hyfunc.cascade.intent import IntentOutput
from hyfunc.cascade.prompts import intent_prompt, tool_text
from hyfunc.schema import Tool


class VLLMIntentEncoder:
    def __init__(self, model_dir: str | Path, kind: str = "causal", dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5):
        try:
            from vllm import LLM
        except ImportError as err:  # the extra is optional: say how to get it
            raise RuntimeError('the vLLM backend needs the optional extra: pip install -e ".[vllm]"') from err
        self.kind = kind
        self.llm = LLM(
            model=str(model_dir),
            runner="pooling",
            convert="embed",
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=False,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.forward_passes = 0

    def _token_states(self, texts: list[str]) -> list[torch.Tensor]:
        from vllm import PoolingParams

        self.forward_passes += 1  # one engine call: vLLM batches the prompts into its own passes
        outputs = self.llm.encode(texts, pooling_task="token_embed", pooling_params=PoolingParams(normalize=False), use_tqdm=False)
        return [out.outputs.data.float().cpu() for out in outputs]

    def soft_tokens(self, queries: list[str]) -> IntentOutput:
        texts = [intent_prompt(q) for q in queries] if self.kind == "causal" else list(queries)
        states = self._token_states(texts)
        if self.kind == "causal":
            soft = torch.stack([s[-1] for s in states])
        else:
            soft = torch.stack([s.mean(dim=0) for s in states])
        return IntentOutput(soft, [int(s.shape[0]) for s in states])

    def function_embeddings(self, tools: list[Tool], batch_size: int = 256) -> torch.Tensor:
        states = self._token_states([tool_text(t) for t in tools])
        return torch.stack([s.mean(dim=0) for s in states])
