"""The producer side of the service: the Celery app's wiring (queues, task names, beat
schedule) and `submit_jobs` / `enqueue`, shared by the API, the CLI and the workers.

Its own package so that `api/` never imports `worker/`, and the core library `hyfunc`
stays free of Celery.
"""

from producer.broker import (
    RUN_TASK,
    SWEEP_TASK,
    broker_depth,
    control_queue,
    create_celery,
    enqueue,
    job_queues,
    retry_queue,
)
from producer.submit import Submitted, submit_jobs

__all__ = ["RUN_TASK", "SWEEP_TASK", "Submitted", "broker_depth", "control_queue", "create_celery", "enqueue",
           "job_queues", "retry_queue", "submit_jobs"]
