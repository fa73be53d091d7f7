"""Evaluation: the demo task, BFCL, and benchmarks."""
