"""Operator tools: the inspector's reports, load generation (wrk or Python), the etcd comparison."""
