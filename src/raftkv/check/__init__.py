"""raftkv.check."""
