"""raftkv.codec."""
