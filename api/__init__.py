"""The HyFunc job API (FastAPI): thin routes over hyfunc.store and the worker's enqueue."""
