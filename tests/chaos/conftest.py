"""Chaos tests: real node processes, real faults. Helpers live in `chaos_helpers.py`.

Tests marked `chaos` (the long runs) are skipped unless asked for with `-m chaos`; the smoke
run and the planted-bug run belong to the default suite. Both kinds need root and nftables.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long chaos run: opt in with `pytest -m chaos`")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)
