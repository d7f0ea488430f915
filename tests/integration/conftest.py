"""Fixtures of the integration tests: real `raftkv serve` processes (see `cluster.py`).

Rules:
- Every test here is marked `integration` (deselect with `-m "not integration"`); they run by
  default, as part of ./scripts/test.sh.
- `make_cluster(**options)` builds a cluster under the test's tmp dir; every cluster a test or
  module made is killed at teardown, and if the test failed, the nodes' logs are printed (pytest
  shows them under "Captured stdout teardown").
- `shared_cluster` is one started 3-node cluster per module, for tests that leave it usable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster

_FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


def _close_all(clusters: list[Cluster], failed: bool) -> None:
    for c in clusters:
        c.close()
    if failed:
        for c in clusters:
            print(f"\n===== logs of the cluster in {c.root} =====")
            print(c.dump_logs())


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(clusters)}", **options)
        clusters.append(c)
        return c

    yield make
    _close_all(clusters, request.node.stash.get(_FAILED, False))


@pytest.fixture(scope="module")
def shared_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        c.start()
        c.wait_ready()
        yield c
    finally:
        failed = any(
            item.stash.get(_FAILED, False)
            for item in request.session.items
            if item.module is request.module
        )
        _close_all([c], failed)
