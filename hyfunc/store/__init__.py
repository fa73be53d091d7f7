"""The SQL job store (SQLAlchemy 2.0): tenants, keys, toolsets, jobs, feedback, replays.

Only this package (and the service layers above it: api/, worker/) imports SQLAlchemy;
the core library stays free of it. The schema comes from Alembic migrations only.
"""
