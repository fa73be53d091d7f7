"""Benchmarks: the cascade against its baselines, side by side, one command each.

One module per benchmark (latency, throughput, tokens, service, memory), the baselines they
compare against, the shared workload (inputs and the random-init bench models) and the
report writer. `hyfunc bench …` (hyfunc/cli/eval.py) wires them together.
"""
