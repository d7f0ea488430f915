"""raftkv.storage."""
