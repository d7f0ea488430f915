"""raftkv.runtime."""
