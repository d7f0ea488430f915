"""Benchmarks: load generation (wrk or Python), the etcd comparison, the core's ceiling.

Rules: the one home of benchmark code (`raftkv bench` and `python -m
raftkv.bench.core_throughput`); operator tools (the inspector, backup) live in `raftkv.ops`.
"""
