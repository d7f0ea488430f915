"""raftkv.cli."""
