"""raftkv.transport."""
