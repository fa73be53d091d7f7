"""Fault injection: the reliability suite (reliability.py) runs the real service as subprocesses
and kills, cuts and restarts its parts while jobs flow; tcp_proxy.py is the cuttable link it (and
tests/service/test_heartbeat.py) put between a process and its database; audit.py is the SQL
trigger that proves exactly-once. Not part of the served path: nothing in hyfunc imports it.
Run: `python -m hyfunc.chaos.reliability`."""
