"""raftkv.client: Python client (sync + asyncio) — grows with the client issue."""
