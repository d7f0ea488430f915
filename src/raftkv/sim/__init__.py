"""raftkv.sim."""
