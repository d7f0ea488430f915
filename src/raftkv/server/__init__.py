"""raftkv.server."""
