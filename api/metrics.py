"""Prometheus metrics read from the job store at scrape time.

Workers are separate processes (often on other machines), so the store, where every
job's timings land, is the one place that sees them all. Histograms are cumulative over
the jobs table, which only grows, so they behave like ordinary Prometheus histograms.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from hyfunc.store.models import JOB_STATUSES, Job

log = logging.getLogger("hyfunc.api")

STAGES = {
    "queue_wait": Job.queue_wait_ms,
    "lml": Job.lml_ms,
    "retrieve": Job.retrieve_ms,
    "lms_prefill": Job.lms_prefill_ms,
    "lms_decode": Job.lms_decode_ms,
    "total": Job.total_ms,
}
LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class StoreCollector:
    def __init__(self, sessions: sessionmaker[Session], celery: Celery, queue: str):
        self.sessions = sessions
        self.celery = celery
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield self._jobs_by_status(session)
            yield self._stage_latency(session)
            yield self._batch_sizes(session)
            depth = GaugeMetricFamily("hyfunc_queue_depth", "Jobs waiting: queued rows, and messages in the broker queue",
                                      labels=["source"])
            depth.add_metric(["database"], session.scalar(select(func.count()).where(Job.status == "queued")) or 0)
        broker = self._broker_depth()
        if broker is not None:
            depth.add_metric(["broker"], broker)
        yield depth

    def _jobs_by_status(self, session: Session) -> Metric:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
        gauge = GaugeMetricFamily("hyfunc_jobs", "Jobs in the store by status", labels=["status"])
        for status in JOB_STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        return gauge

    def _stage_latency(self, session: Session) -> Metric:
        hist = HistogramMetricFamily("hyfunc_stage_latency_ms", "Per-stage latency of succeeded jobs (ms)",
                                     labels=["stage"])
        for stage, column in STAGES.items():
            columns = [func.sum(case((column <= b, 1), else_=0)) for b in LATENCY_BUCKETS_MS]
            row = session.execute(
                select(*columns, func.count(column), func.sum(column)).where(Job.status == "succeeded")
            ).one()
            count, total = int(row[-2] or 0), float(row[-1] or 0.0)
            buckets = [(str(b), int(row[i] or 0)) for i, b in enumerate(LATENCY_BUCKETS_MS)]
            hist.add_metric([stage], buckets + [("+Inf", count)], sum_value=total)
        return hist

    def _batch_sizes(self, session: Session) -> Metric:
        rows = session.execute(
            select(Job.batch_size, func.count(func.distinct(Job.batch_id)))
            .where(Job.batch_id.is_not(None), Job.batch_size > 0, Job.finished_at.is_not(None))
            .group_by(Job.batch_size)
        ).tuples().all()
        hist = HistogramMetricFamily("hyfunc_batch_size", "Jobs per cascade batch")
        batches = sum(n for _, n in rows)
        buckets = [(str(b), sum(n for size, n in rows if size <= b)) for b in BATCH_BUCKETS]
        hist.add_metric([], buckets + [("+Inf", batches)], sum_value=float(sum(size * n for size, n in rows)))
        return hist

    def _broker_depth(self) -> int | None:
        try:
            with self.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                return conn.default_channel.queue_declare(self.queue, passive=True).message_count
        except Exception as err:  # noqa: BLE001 - a scrape must not fail on the broker
            log.debug("broker queue depth unavailable: %s", err)
            return None


def make_registry(sessions: sessionmaker[Session], celery: Celery, queue: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(sessions, celery, queue))  # type: ignore[arg-type]
    return registry
