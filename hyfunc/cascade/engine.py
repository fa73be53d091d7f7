"""Cascade: LML soft tokens -> function-index search -> templated LMS decoding, for one batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from hyfunc.cascade.backend import LMSBackend, load_plugin, make_lms_backend
from hyfunc.cascade.decoding import resolve_decoding
from hyfunc.cascade.index import FunctionIndex, SearchHit
from hyfunc.cascade.intent import IntentEncoder
from hyfunc.cascade.prompts import lms_job_ids
from hyfunc.cascade.scheduler import DecodeJob, DecodeResult, ProgramSpec
from hyfunc.cascade.template import MachineLimits, TemplateMachine
from hyfunc.config import CascadeConfig, HyFuncConfig, ModelsConfig
from hyfunc.models.bundle import ModelBundle, ModelsError
from hyfunc.schema import (
    CallRequest,
    CallResult,
    Candidate,
    ForwardPasses,
    StageTimings,
    TokenCounts,
    Tool,
    validate_call,
)
from hyfunc.schema_limits import CompileLimits, SchemaTooLarge, tool_problem

log = logging.getLogger(__name__)


class Cascade:
    """Holds the loaded models (once per process) and runs batches of requests."""

    def __init__(
        self,
        bundle: ModelBundle,
        config: CascadeConfig | None = None,
        index_dir: str | Path | None = None,
        models: ModelsConfig | None = None,
    ):
        self.bundle = bundle
        # Unset decoding keys come from the manifest (how the LMS was trained to decode).
        self.config = resolve_decoding(config or CascadeConfig(), bundle.manifest.decoding)
        self.intent: IntentEncoder
        if models is not None and models.intent_backend == "vllm":
            # The LML on a vLLM engine (the bundle then holds only its tokenizer, no transformers LML).
            self.intent = load_plugin("intent:vllm").from_bundle(bundle, models, batch_size=self.config.batch_size)
        else:
            self.intent = IntentEncoder(bundle.intent_model, bundle.intent_tokenizer, bundle.manifest.intent_kind, bundle.device)
        limits = MachineLimits(
            max_calls=self.config.max_calls,
            max_string_tokens=self.config.max_string_tokens,
            max_number_tokens=self.config.max_number_tokens,
            max_array_items=self.config.max_array_items,
            copy_values=self.config.copy_values,
            copy_distinct=self.config.copy_distinct,
            write_values=self.config.write_values,
            no_call=self.config.no_call,
        )
        self.machine = TemplateMachine(bundle.lms_tokenizer, limits, logits_size=int(bundle.lms.config.vocab_size))
        # The LMS backend (models.lms_backend): our transformers decoder, or vLLM.
        self.decoder: LMSBackend = make_lms_backend(bundle, self.machine, self.config, models)
        versions = bundle.versions()
        self.index_version = f"{versions.get('intent', '')}-{versions.get('retriever', '')}"
        self.index_dir = Path(index_dir) if index_dir else None
        self.index = FunctionIndex.load(self.index_dir, self.index_version) if self.index_dir else FunctionIndex(self.index_version)
        self.index_passes = 0  # LML passes spent embedding new tools (not per job)
        # What a job's candidate schemas may compile to (config `limits`, set by load()); a job
        # over a limit, or over cascade.max_prompt_tokens, fails alone before its prefill.
        self.compile_limits: CompileLimits | None = None

    @classmethod
    def load(cls, config: HyFuncConfig) -> Cascade:
        models_dir = config.models_dir()
        if models_dir is None:
            raise ModelsError(
                "no models configured: pass --models DIR (create test models with "
                "`hyfunc models tiny DIR`) or set models.dir in the config"
            )
        bundle = ModelBundle.load(
            models_dir,
            device=config.models.device,
            dtype=config.models.dtype,
            load_intent_model=config.models.intent_backend != "vllm",
        )
        index_dir = config.cascade.index_dir or (Path(models_dir) / "index")
        cascade = cls(bundle, config.cascade, index_dir, models=config.models)
        cascade.compile_limits = CompileLimits.from_config(config.limits)
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

    @property
    def no_call_ceiling(self) -> float | None:
        if self.config.no_call_ceiling is not None:
            return self.config.no_call_ceiling
        return self.bundle.manifest.no_call_ceiling

    def _may_answer_no_call(self, hits) -> bool:
        """Below the ceiling the LMS may answer "no call"; at or above it the retriever is sure a
        candidate fits (calibrated on held-out no-call queries), so the answer is a call."""
        ceiling = self.no_call_ceiling
        return ceiling is None or not hits or hits[0].score < ceiling

    def _name_prior(self, hits) -> list[float] | None:
        """The retriever's log-probabilities over the candidates shown to the LMS (its training
        softmax, restricted to them), scaled by ``cascade.retriever_prior``."""
        weight = self.config.retriever_prior
        if weight == 0 or len(hits) < 2:
            return None
        scores = torch.tensor([hit.score for hit in hits]) / self.bundle.retriever.config.temperature
        return (weight * torch.log_softmax(scores, dim=0)).tolist()

    def retrieve(self, soft_tokens: torch.Tensor, toolsets: list[list[Tool]], top_k: int | None = None) -> list[list[SearchHit]]:
        """Retrieval, the one path the engine, evaluation and the benches take: tools not in the
        function index yet are embedded once (by content hash; the index is saved when it has a
        directory), the query tower runs on the soft tokens, and one masked product against the
        index ranks each request's own tools, best first (`top_k`: cascade.top_k)."""
        all_tools = [tool for tools in toolsets for tool in tools]
        if self.index.ensure(all_tools, self._embed_tools, self.bundle.retriever.encode_keys):
            self._save_index()
        retriever = self.bundle.retriever
        queries = retriever.encode_queries(soft_tokens.to(next(retriever.parameters()).device))
        return self.index.search(queries, toolsets, top_k or self.config.top_k)

    def job_prompt_ids(self, query: str, candidates: list[Tool], soft_tokens: int) -> list[int]:
        """A job's LMS prompt ids as served: the candidates in cascade.prompt_order."""
        return lms_job_ids(self.bundle.lms_tokenizer, query, candidates, soft_tokens, self.config.prompt_order)

    def decode_jobs(self, prepared: Prepared) -> Iterator[DecodeJob]:
        """Stage 3's jobs, one per request that passed the gate (in ``prepared.selected`` order),
        built one at a time, when the decoder has a row for them (the program build is then
        counted in the job's ``program`` stage, not hidden before decoding starts)."""
        requests, hits, projected = prepared.requests, prepared.hits, prepared.projected
        for j, i in enumerate(prepared.selected):
            candidates = [hit.tool for hit in hits[i]]
            soft = projected[j] if projected is not None else None
            prompt_ids = self.job_prompt_ids(requests[i].query, candidates, soft.shape[0] if soft is not None else 0)
            spec = ProgramSpec(candidates, source=requests[i].query, prior=self._name_prior(hits[i]),
                               allow_no_call=self._may_answer_no_call(hits[i]))
            problem = self._over_limits(requests[i], candidates, len(prompt_ids))
            try:
                if problem:
                    raise SchemaTooLarge(problem)
                program = self.machine.program(spec.candidates, source=spec.source, prior=spec.prior,
                                               allow_no_call=spec.allow_no_call)
            except Exception as err:  # noqa: BLE001 - a schema the machine cannot template fails its job alone
                program = _failing(err)
            yield DecodeJob(prompt_ids, soft, program, spec)

    def _over_limits(self, request: CallRequest, candidates: list[Tool], prompt_tokens: int) -> str | None:
        """Why this job may not run (a candidate over a compile limit, or its prompt over
        cascade.max_prompt_tokens), naming the field and the key; None when it may."""
        if self.compile_limits is not None:
            where = {tool.name: k for k, tool in enumerate(request.tools)}
            for tool in candidates:
                problem = tool_problem(tool, f"tools[{where.get(tool.name, '?')}]", self.compile_limits)
                if problem:
                    return problem
        cap = self.config.max_prompt_tokens
        if cap is not None and prompt_tokens > cap:
            return f"the LMS prompt is {prompt_tokens} tokens; limit cascade.max_prompt_tokens is {cap}"
        return None

    def _decode(self, jobs: Iterator[DecodeJob], count: int) -> list[DecodeResult]:
        """Up to batch_size rows; with more jobs, rows are refilled as jobs finish (continuous
        batching) or, with cascade.continuous off, static batches run one after another."""
        rows = max(1, min(self.config.batch_size, count))
        results: list[DecodeResult | None] = [None] * count
        for index, result in self.decoder.stream(jobs, max_rows=rows, refill=self.config.continuous):
            results[index] = result
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def run(self, requests: list[CallRequest]) -> list[CallResult]:
        """One batch of requests. Each job's ``timings_ms`` stages add up to its ``total``: the wall
        time from the batch entering the cascade until the job's decoder row finished."""
        if not requests:
            return []
        prepared = self.prepare(requests)
        decoded: dict[int, DecodeResult] = {}
        if prepared.selected:
            outs = self._decode(self.decode_jobs(prepared), len(prepared.selected))
            decoded = dict(zip(prepared.selected, outs, strict=True))
        results = self.assemble(prepared, decoded)
        log.debug("batch of %d in %.1f ms", len(requests), (time.perf_counter() - prepared.start) * 1000)
        return results

    @torch.inference_mode()
    def prepare(self, requests: list[CallRequest]) -> Prepared:
        """Stages 1 and 2 for a batch: the LML soft tokens, retrieval, the relevance gate, the projector."""
        batch_start = time.perf_counter()

        # 1. LML: each query read once, in one pass per length bucket.
        lml_passes_before = self.intent.forward_passes
        intent = self.intent.soft_tokens([r.query for r in requests])
        lml_passes = self.intent.forward_passes - lml_passes_before
        t1 = time.perf_counter()
        lml_ms = (t1 - batch_start) * 1000

        # 2. Retrieval: new tools into the index, then one product against it; the relevance gate
        # and the projector for the jobs that pass it.
        hits = self.retrieve(intent.soft_tokens, [r.tools for r in requests])
        threshold = self.relevance_threshold
        selected = [i for i, h in enumerate(hits) if h and h[0].score >= threshold]
        projected = None
        if selected:
            projected = self.bundle.projector(intent.soft_tokens[selected].to(self.bundle.device, self.bundle.dtype))
        retrieve_ms = (time.perf_counter() - t1) * 1000
        return Prepared(requests, batch_start, intent.prompt_tokens, lml_passes, lml_ms, retrieve_ms, hits, threshold,
                        selected, projected)

    def assemble(self, prepared: Prepared, decoded: dict[int, DecodeResult]) -> list[CallResult]:
        """The results: decoded jobs (by request index) validated against their tools, the rest no-calls."""
        return [self.assemble_one(prepared, i, decoded.get(i)) for i in range(len(prepared.requests))]

    def assemble_one(self, prepared: Prepared, i: int, out: DecodeResult | None) -> CallResult:
        request, hits = prepared.requests[i], prepared.hits
        result = CallResult(
            id=request.id,
            candidates=[Candidate(name=h.tool.name, score=round(h.score, 6)) for h in hits[i]],
            tokens=TokenCounts(lml_prompt=prepared.prompt_tokens[i]),
            # Each query is read in exactly one LML pass (its length bucket's).
            forward_passes=ForwardPasses(lml=1 if prepared.lml_passes else 0),
            warnings=request.warnings,
        )
        timings = StageTimings(lml=prepared.lml_ms, retrieve=prepared.retrieve_ms)
        if out is not None:
            stats = out.stats
            timings.lms_wait = stats.wait_ms
            timings.program = stats.program_ms
            timings.lms_prefill = stats.prefill_ms
            timings.lms_decode = stats.decode_ms
            timings.sample = stats.sample_ms
            result.tokens.lms_prompt = stats.prompt_tokens
            result.tokens.prompt_reused = stats.prompt_reused
            result.tokens.prompt_computed = stats.prompt_computed
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
                    if not out.calls:
                        result.no_call_reason = "the LMS chose no call (none of the candidates fits the query)"
        else:
            best = hits[i][0].score if hits[i] else float("nan")
            result.no_call_reason = (
                f"no tool is relevant enough: best score {best:.3f} < threshold {prepared.threshold:.3f}"
            )
        rounded = {k: round(v, 3) for k, v in timings.model_dump().items() if k != "total"}
        rounded["total"] = round(sum(rounded.values()), 3)
        result.timings_ms = StageTimings(**rounded)
        return result


@dataclass
class Prepared:
    """A batch after the LML and retrieval: what decoding and result assembly need."""

    requests: list[CallRequest]
    start: float  # perf_counter when the batch entered the cascade
    prompt_tokens: list[int]  # LML prompt tokens per request
    lml_passes: int
    lml_ms: float
    retrieve_ms: float
    hits: list
    threshold: float
    selected: list[int]  # requests that passed the relevance gate, in decoding order
    projected: torch.Tensor | None  # their projected soft tokens (row j: request selected[j])


def _failing(err: Exception):
    """A program that fails at its first step with ``err`` (the decoder reports it for that job)."""
    raise err
    yield  # pragma: no cover - makes this a generator
