"""Operator tools: the inspector (online and offline), backups and disaster recovery.

Modules: `inspector` / `render` / `offline` (`raftkv inspect`), `backup` (`raftkv snapshot
save|status`), `recovery` (`raftkv snapshot restore`, `raftkv serve --force-new-cluster`),
`httpc` (the tools' small JSON-over-HTTP helper).

Rules: everything an operator runs against a cluster or a data directory lives here; load
generation and the etcd comparison live in `raftkv.bench`. This package may use `raftkv.client`,
`raftkv.server`, `raftkv.runtime` and `raftkv.storage`, never the other way round;
`raftkv.bench` may use it (the HTTP helper).
"""
