"""`celery -A worker.main worker ...` entry point; the config comes from $HYFUNC_CONFIG."""

from worker.app import create_app

app = create_app()
