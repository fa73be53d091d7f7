"""Stage names of one job's trip through the service: the one list the job store's timing
columns, the API's `timings_ms`, the Prometheus labels and the CLI summary all read."""

from __future__ import annotations

# queue_wait is the service's (created -> claimed); the rest are the cascade's own, in the order a
# job passes them (hyfunc.schema.StageTimings): lml + retrieve + lms_wait (for a decoder row) +
# program (admission) + lms_prefill + lms_decode + sample == total.
CASCADE_STAGES: tuple[str, ...] = (
    "lml", "retrieve", "lms_wait", "program", "lms_prefill", "lms_decode", "sample", "total",
)
STAGES: tuple[str, ...] = ("queue_wait", *CASCADE_STAGES)


def timing_column(stage: str) -> str:
    """The jobs table column holding a stage's milliseconds."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return f"{stage}_ms"
