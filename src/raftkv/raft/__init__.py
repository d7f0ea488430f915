"""raftkv.raft."""
