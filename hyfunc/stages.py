"""Stage names and token counters of one job's trip through the service: the one list of each
that the job store's columns, the API's `timings_ms` / `tokens`, the Prometheus labels and the CLI
summary read (hyfunc.schema.StageTimings and TokenCounts hold exactly these fields)."""

from __future__ import annotations

# queue_wait is the service's (created -> claimed); the rest are the cascade's own, in the order a
# job passes them (hyfunc.schema.StageTimings): lml + retrieve + lms_wait (for a decoder row) +
# program (admission) + lms_prefill + lms_decode + sample == total.
CASCADE_STAGES: tuple[str, ...] = (
    "lml", "retrieve", "lms_wait", "program", "lms_prefill", "lms_decode", "sample", "total",
)
STAGES: tuple[str, ...] = ("queue_wait", *CASCADE_STAGES)


# The LMS counters per job: lms_prompt == prompt_reused + prompt_computed (the prefix cache's
# share and the rest); shared_prefix is the system prefix every job shares (counted once per process).
TOKEN_COUNTERS: tuple[str, ...] = (
    "lml_prompt", "lms_prompt", "injected", "generated", "shared_prefix", "prompt_reused", "prompt_computed",
)


def token_column(counter: str) -> str:
    """The jobs table column holding a token counter."""
    if counter not in TOKEN_COUNTERS:
        raise KeyError(f"unknown token counter {counter!r}; counters are {list(TOKEN_COUNTERS)}")
    return f"tokens_{counter}"


def timing_column(stage: str) -> str:
    """The jobs table column holding a stage's milliseconds."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return f"{stage}_ms"
