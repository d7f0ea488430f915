"""Test-only node launcher with a planted bug: every GET is served from local state.

Usage (what the chaos tool runs with `--node-cmd "python tests/chaos/weak_node.py"`):
    python tests/chaos/weak_node.py serve --config FILE --node-id ID

It wraps the node the HTTP API is built on so that `read` ignores `linearizable` (the
`?consistency=` parameter) and reads the local applied state at once, then runs the normal
`raftkv` entry point. A node cut off from the majority, or a lagging follower, then answers
reads with stale values: exactly what a linearizability checker must catch. Production code
carries no switch for this; the bug lives only here.
"""

from __future__ import annotations

from typing import Any

import raftkv.cli.serve as serve_module
from raftkv.cli.main import main
from raftkv.server.http import create_app as real_create_app


class StaleReads:
    """The real node, except that every read is a local (possibly stale) read."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)

    @property
    def node_id(self) -> str:
        return str(self._node.node_id)

    async def read(
        self, fn: Any, *, linearizable: bool, min_revision: int = 0, lease: bool = False
    ) -> Any:
        return await self._node.read(fn, linearizable=False, min_revision=min_revision)


def weak_create_app(node: Any, settings: Any) -> Any:
    return real_create_app(StaleReads(node), settings)


def patch() -> None:
    # serve_node looks create_app up in its module at call time; fail loudly if that changes,
    # rather than silently running an unpatched node and making the bite test meaningless.
    if getattr(serve_module, "create_app", None) is not real_create_app:
        raise RuntimeError("raftkv.cli.serve no longer calls create_app: update weak_node.py")
    serve_module.create_app = weak_create_app


if __name__ == "__main__":
    patch()
    main()
