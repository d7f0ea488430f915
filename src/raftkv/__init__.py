"""raftkv: a distributed, strongly consistent key-value store on Raft."""

__version__ = "0.1.0"
