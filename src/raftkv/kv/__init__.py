"""raftkv.kv."""
