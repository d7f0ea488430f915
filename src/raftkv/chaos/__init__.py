"""raftkv.chaos: fault injection on real node processes, judged by `raftkv.check`.

A run (`run.run_chaos`) starts its own cluster (`cluster`: `raftkv serve` processes on
127.0.0.1, .2, .3 ...), drives a recorded client workload (`workload`, over the send-once
client in `httpclient`) while the nemesis (`nemesis`) kills, pauses and partitions nodes
(`netfilter`: nftables), then heals everything and checks the history for linearizability,
acknowledged writes lost and diverging replicas (`analysis`), and reports (`report`).

Rules: nothing here is imported by the node; the package is an edge (like server/ and client/)
and talks to nodes only through their HTTP API and Unix signals.
"""
