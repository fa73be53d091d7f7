"""Celery workers for the HyFunc service: batched job execution and the lease sweeper."""
