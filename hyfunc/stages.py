"""Stage names of one job's trip through the service: the one list the job store's timing
columns, the API's `timings_ms`, the Prometheus labels and the CLI summary all read."""

from __future__ import annotations

# queue_wait is the service's (created -> claimed); the rest are the cascade's own.
CASCADE_STAGES: tuple[str, ...] = ("lml", "retrieve", "lms_prefill", "lms_decode", "total")
STAGES: tuple[str, ...] = ("queue_wait", *CASCADE_STAGES)
# The decoder's finer split of a job's time, in each result's `timings_ms` (hyfunc.schema.StageTimings)
# next to CASCADE_STAGES: lml + retrieve + lms_wait + program + lms_prefill + lms_decode + sample
# == total. Not (yet) timing columns of the jobs table.
DECODER_STAGES: tuple[str, ...] = ("lms_wait", "program", "sample")


def timing_column(stage: str) -> str:
    """The jobs table column holding a stage's milliseconds."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return f"{stage}_ms"
