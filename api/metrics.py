"""Prometheus metrics read from the store's incremental counters at scrape time.

Workers are separate processes (often on other machines), so the store, where every
job's status change lands, is the one place that sees them all. Each change bumps a few
rows of the `counters` table in its own transaction (hyfunc.store.counters), so a scrape
reads a few dozen rows, never the jobs table, however large it grows.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from celery import Celery
from fastapi import FastAPI, Header, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.orm import Session, sessionmaker

from hyfunc.stages import STAGES
from hyfunc.store.counters import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS_MS,
    cumulative,
    read_counters,
    status_key,
)
from hyfunc.store.status import JOB_STATUSES, QUEUED
from producer.broker import broker_depth, job_queues

log = logging.getLogger("hyfunc.api")

REQUEUE_REASONS = ("dead_worker",)
METRICS_OFF = ("metrics are off: set api.metrics_token (or $HYFUNC_METRICS_TOKEN) and send "
               "`Authorization: Bearer <token>`, or set api.metrics_open: true")


class StoreCollector:
    def __init__(self, sessions: sessionmaker[Session], celery: Celery, queue: str):
        self.sessions = sessions
        self.celery = celery
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            values = read_counters(session)
        jobs = GaugeMetricFamily("hyfunc_jobs", "Jobs in the store by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], values.get(status_key(status), 0.0))
        yield jobs

        hist = HistogramMetricFamily("hyfunc_stage_latency_ms", "Per-stage latency of succeeded jobs (ms)",
                                     labels=["stage"])
        for stage in STAGES:
            buckets, total, _ = cumulative(values, f"stage_ms.{stage}", LATENCY_BUCKETS_MS)
            hist.add_metric([stage], buckets, sum_value=total)
        yield hist

        batches = HistogramMetricFamily("hyfunc_batch_size", "Jobs per cascade batch")
        buckets, total, _ = cumulative(values, "batch_size", BATCH_BUCKETS)
        batches.add_metric([], buckets, sum_value=total)
        yield batches

        requeued = CounterMetricFamily("hyfunc_jobs_requeued", "Running jobs sent back to the queue",
                                       labels=["reason"])
        for reason in REQUEUE_REASONS:
            requeued.add_metric([reason], values.get(f"jobs.requeued.{reason}", 0.0))
        yield requeued

        depth = GaugeMetricFamily("hyfunc_queue_depth", "Jobs waiting: queued rows, and messages in the broker queue",
                                  labels=["source"])
        depth.add_metric(["database"], values.get(status_key(QUEUED), 0.0))
        depths = [broker_depth(self.celery, q) for q in job_queues(self.queue)]
        if None not in depths:
            depth.add_metric(["broker"], sum(d for d in depths if d is not None))
        yield depth


def make_registry(sessions: sessionmaker[Session], celery: Celery, queue: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(sessions, celery, queue))  # type: ignore[arg-type]
    return registry


def token_ok(token: str | None, authorization: str | None) -> bool:
    """No token configured, or `Authorization: Bearer <token>` (compared in constant time)."""
    if not token:
        return True
    given = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else ""
    return hmac.compare_digest(given.encode(), token.encode())


def create_metrics_app(state: Any) -> FastAPI:
    """/metrics alone, for `api.metrics_port` (the API's own /metrics then answers 404)."""
    app = FastAPI(title="HyFunc metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not state.config.api.metrics_token and not state.config.api.metrics_open:
            return JSONResponse({"detail": METRICS_OFF}, status_code=403)
        if not token_ok(state.config.api.metrics_token, authorization):
            return JSONResponse({"detail": "metrics need `Authorization: Bearer <api.metrics_token>`"},
                                status_code=401)
        data = await run_in_threadpool(generate_latest, state.metrics_registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app
