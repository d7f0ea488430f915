"""Operator tools: the inspector's reports (online and offline), the operator's HTTP helper.

Rules: everything an operator runs against a cluster or a data directory lives here (inspector,
and as they land: backup/restore, membership commands); load generation and the etcd comparison
live in `raftkv.bench`. This package may use `raftkv.client` and `raftkv.server`'s config
loading, never the other way round; `raftkv.bench` may use it (the HTTP helper).
"""
