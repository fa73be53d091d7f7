"""Cascade: LML soft tokens -> function-index search -> templated LMS decoding, for one batch."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from hyfunc.cascade.decoder import DecodeJob, LMSDecoder
from hyfunc.cascade.decoding import resolve_decoding
from hyfunc.cascade.index import FunctionIndex
from hyfunc.cascade.intent import IntentEncoder
from hyfunc.cascade.prompts import lms_job_prompt
from hyfunc.cascade.template import MachineLimits, TemplateMachine
from hyfunc.config import CascadeConfig, HyFuncConfig
from hyfunc.models.bundle import ModelBundle, ModelsError
from hyfunc.schema import (
    CallRequest,
    CallResult,
    Candidate,
    ForwardPasses,
    StageTimings,
    TokenCounts,
    validate_call,
)

log = logging.getLogger(__name__)


class Cascade:
    """Holds the loaded models (once per process) and runs batches of requests."""

    def __init__(self, bundle: ModelBundle, config: CascadeConfig | None = None, index_dir: str | Path | None = None):
        self.bundle = bundle
        # Unset decoding keys come from the manifest (how the LMS was trained to decode).
        self.config = resolve_decoding(config or CascadeConfig(), bundle.manifest.decoding)
        self.intent = IntentEncoder(bundle.intent_model, bundle.intent_tokenizer, bundle.manifest.intent_kind, bundle.device)
        limits = MachineLimits(
            max_calls=self.config.max_calls,
            max_string_tokens=self.config.max_string_tokens,
            max_number_tokens=self.config.max_number_tokens,
            max_array_items=self.config.max_array_items,
            copy_values=self.config.copy_values,
            copy_distinct=self.config.copy_distinct,
        )
        self.machine = TemplateMachine(bundle.lms_tokenizer, limits, logits_size=int(bundle.lms.config.vocab_size))
        self.decoder = LMSDecoder(bundle.lms, bundle.lms_tokenizer, self.machine, bundle.device)
        versions = bundle.versions()
        self.index_version = f"{versions.get('intent', '')}-{versions.get('retriever', '')}"
        self.index_dir = Path(index_dir) if index_dir else None
        self.index = FunctionIndex.load(self.index_dir, self.index_version) if self.index_dir else FunctionIndex(self.index_version)
        self.index_passes = 0  # LML passes spent embedding new tools (not per job)

    @classmethod
    def load(cls, config: HyFuncConfig) -> Cascade:
        models_dir = config.models_dir()
        if models_dir is None:
            raise ModelsError(
                "no models configured: pass --models DIR (create test models with "
                "`hyfunc models tiny DIR`) or set models.dir in the config"
            )
        bundle = ModelBundle.load(models_dir, device=config.models.device, dtype=config.models.dtype)
        index_dir = config.cascade.index_dir or (Path(models_dir) / "index")
        cascade = cls(bundle, config.cascade, index_dir)
        if config.models.intent_backend == "vllm":
            from hyfunc.backends.vllm_intent import VLLMIntentEncoder
            from hyfunc.models.bundle import resolve_part

            cascade.intent = VLLMIntentEncoder(  # type: ignore[assignment]
                resolve_part(bundle.directory, bundle.manifest.intent_path),
                kind=bundle.manifest.intent_kind,
                dtype=config.models.dtype,
            )
        return cascade

    @property
    def model_versions(self) -> dict[str, str]:
        return self.bundle.versions()

    @property
    def relevance_threshold(self) -> float:
        if self.config.relevance_threshold is not None:
            return self.config.relevance_threshold
        return self.bundle.manifest.relevance_threshold

    def _embed_tools(self, tools):
        before = self.intent.forward_passes
        out = self.intent.function_embeddings(tools)
        self.index_passes += self.intent.forward_passes - before
        return out

    def _save_index(self) -> None:
        if self.index_dir is None:
            return
        try:
            self.index.save(self.index_dir)
        except OSError as err:  # a read-only models directory: keep the index in memory
            log.warning("function index not saved to %s: %s", self.index_dir, err)

    def _name_prior(self, hits) -> list[float] | None:
        """The retriever's log-probabilities over the candidates shown to the LMS (its training
        softmax, restricted to them), scaled by ``cascade.retriever_prior``."""
        weight = self.config.retriever_prior
        if weight == 0 or len(hits) < 2:
            return None
        scores = torch.tensor([hit.score for hit in hits]) / self.bundle.retriever.config.temperature
        return (weight * torch.log_softmax(scores, dim=0)).tolist()

    @torch.inference_mode()
    def run(self, requests: list[CallRequest]) -> list[CallResult]:
        if not requests:
            return []
        batch_start = time.perf_counter()

        # 1. LML: one forward pass for the whole batch.
        t0 = time.perf_counter()
        lml_passes_before = self.intent.forward_passes
        intent = self.intent.soft_tokens([r.query for r in requests])
        lml_passes = self.intent.forward_passes - lml_passes_before
        lml_ms = (time.perf_counter() - t0) * 1000

        # 2. Retrieval: new tools into the index, then one product against it.
        t1 = time.perf_counter()
        all_tools = [tool for r in requests for tool in r.tools]
        if self.index.ensure(all_tools, self._embed_tools, self.bundle.retriever.encode_keys):
            self._save_index()
        queries = self.bundle.retriever.encode_queries(intent.soft_tokens.to(next(self.bundle.retriever.parameters()).device))
        hits = self.index.search(queries, [r.tools for r in requests], self.config.top_k)
        retrieve_ms = (time.perf_counter() - t1) * 1000

        # 3. LMS for the jobs whose best candidate clears the relevance gate.
        threshold = self.relevance_threshold
        selected = [i for i, h in enumerate(hits) if h and h[0].score >= threshold]
        projected = None
        if selected:
            projected = self.bundle.projector(intent.soft_tokens[selected].to(self.bundle.device, self.bundle.dtype))
        jobs = []
        for j, i in enumerate(selected):
            candidates = [hit.tool for hit in hits[i]]
            soft = projected[j] if projected is not None else None
            prompt = lms_job_prompt(
                requests[i].query, candidates, soft.shape[0] if soft is not None else 0, tokenizer=self.bundle.lms_tokenizer
            )
            prompt_ids = self.bundle.lms_tokenizer.encode(prompt, add_special_tokens=False)
            program = self.machine.program(candidates, source=requests[i].query, prior=self._name_prior(hits[i]))
            jobs.append(DecodeJob(prompt_ids, soft, program))
        decoded = dict(zip(selected, self.decoder.decode(jobs), strict=True))

        results = []
        for i, request in enumerate(requests):
            result = CallResult(
                id=request.id,
                candidates=[Candidate(name=h.tool.name, score=round(h.score, 6)) for h in hits[i]],
                tokens=TokenCounts(lml_prompt=intent.prompt_tokens[i]),
                forward_passes=ForwardPasses(lml=lml_passes),
                warnings=request.warnings,
            )
            timings = StageTimings(lml=lml_ms, retrieve=retrieve_ms)
            if i in decoded:
                out = decoded[i]
                stats = out.stats
                timings.lms_prefill = stats.prefill_ms
                timings.lms_decode = stats.decode_ms
                result.tokens.lms_prompt = stats.prompt_tokens
                result.tokens.injected = stats.injected
                result.tokens.generated = stats.generated
                result.tokens.shared_prefix = len(self.decoder.prefix_ids)
                result.forward_passes.lms = stats.forward_passes
                if out.error:
                    result.error = out.error
                else:
                    problems = [p for call in out.calls for p in validate_call(call, request.tools)]
                    if problems:
                        result.error = "LMS output failed schema validation: " + "; ".join(problems)
                    else:
                        result.calls = out.calls
            else:
                best = hits[i][0].score if hits[i] else float("nan")
                result.no_call_reason = (
                    f"no tool is relevant enough: best score {best:.3f} < threshold {threshold:.3f}"
                )
            timings.total = timings.lml + timings.retrieve + timings.lms_prefill + timings.lms_decode
            result.timings_ms = StageTimings(**{k: round(v, 3) for k, v in timings.model_dump().items()})
            results.append(result)
        log.debug("batch of %d in %.1f ms", len(requests), (time.perf_counter() - batch_start) * 1000)
        return results
