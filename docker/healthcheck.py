"""Container healthchecks (docker/docker-compose.yml): exit 0 healthy, 1 not.

    python docker/healthcheck.py api      # the API answers GET /livez on its port
    python docker/healthcheck.py worker   # this container's worker beat into the workers table lately
    python docker/healthcheck.py broker   # the broker accepts a connection (the beat service)

The images carry no curl; these use the standard library and the installed packages only.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def api() -> bool:
    port = os.environ.get("HYFUNC_API_PORT", "8000")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as response:
        return response.status == 200


def worker() -> bool:
    # The heartbeat thread runs beside the model work, so a fresh beat means: the process
    # lives and reaches the database. A worker on a batch still beats; one that lost the
    # database stops beating, and then it cannot take jobs either.
    from hyfunc.config import load_config
    from hyfunc.store.db import session_factory
    from hyfunc.store.workers import live_workers

    config = load_config()
    wc = config.worker
    with session_factory(config.store.url)() as session:
        live = live_workers(session, stale_after_seconds=wc.heartbeat_interval * wc.heartbeat_misses)
    return any(w.host == socket.gethostname() for w in live)


def broker() -> bool:
    from producer import create_celery

    with create_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
    return True


CHECKS = {"api": api, "worker": worker, "broker": broker}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        raise SystemExit(f"usage: healthcheck.py {'|'.join(CHECKS)}")
    try:
        healthy = CHECKS[sys.argv[1]]()
    except Exception as err:  # noqa: BLE001 - any failure is "unhealthy"; say which, briefly
        print(f"{sys.argv[1]}: {type(err).__name__}", file=sys.stderr)
        healthy = False
    sys.exit(0 if healthy else 1)
