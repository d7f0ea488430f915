"""`raftkv.client` on the data model (issue 11) against real nodes: revisions, CAS and the
8-thread counter, ranges, transactions, compaction, binary values, read-your-writes, and
exactly-once retries under sessions across a leader kill."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from raftkv.client import (
    AsyncClient,
    Client,
    Compacted,
    Compare,
    Delete,
    Get,
    NotFound,
    PreconditionFailed,
    Put,
    RaftkvError,
)
from raftkv.client.types import GetOpResult, PutOpResult
from tests.integration.cluster import Cluster, MakeCluster, wait_for

THREADS = 8
INCREMENTS = 25


def endpoints(c: Cluster) -> list[str]:
    return [n.http for n in c.nodes.values()]


def test_revisions_and_compare_and_set(shared_cluster: Cluster) -> None:
    with Client(endpoints(shared_cluster)) as kv:
        first = kv.put("cas:k", "one")
        second = kv.put("cas:k", "two")
        assert 0 < first.revision < second.revision
        item = kv.get("cas:k")
        assert (item.value, item.mod_revision, item.version) == ("two", second.revision, 2)
        assert item.create_revision == first.revision
        assert kv.get("cas:k", revision=first.revision).value == "one"  # history

        with pytest.raises(PreconditionFailed) as info:
            kv.put("cas:k", "three", if_match=first.revision)
        assert info.value.mod_revision == second.revision
        assert kv.put("cas:k", "three", if_match=second.revision).revision > second.revision

        with pytest.raises(PreconditionFailed):
            kv.put("cas:k", "again", if_absent=True)
        assert kv.put("cas:new", "x", if_absent=True).revision > 0
        with pytest.raises(PreconditionFailed) as info:
            kv.delete("cas:new", if_match=1)
        assert kv.delete("cas:new", if_match=info.value.mod_revision).revision > 0


def test_counter_incremented_by_8_threads_with_cas_ends_exact(shared_cluster: Cluster) -> None:
    """The README's example: no lost update, whatever the interleaving."""
    conflicts = 0
    lock = threading.Lock()
    with Client(endpoints(shared_cluster)) as kv:

        def incr(old: str | bytes | None) -> str:
            return str(int(old or 0) + 1)

        def worker() -> None:
            nonlocal conflicts
            for _ in range(INCREMENTS):
                while True:  # the loop `update` runs, spelled out to count conflicts
                    try:
                        item = kv.get("counter")
                        kv.put("counter", incr(item.value), if_match=item.mod_revision)
                        break
                    except NotFound:
                        try:
                            kv.put("counter", "1", if_absent=True)
                            break
                        except PreconditionFailed:
                            pass
                    except PreconditionFailed:
                        with lock:
                            conflicts += 1

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert kv.get("counter").value == str(THREADS * INCREMENTS)
        # `update` does the same loop
        updaters = [
            threading.Thread(
                target=lambda: [kv.update("counter2", incr) for _ in range(INCREMENTS)]
            )
            for _ in range(THREADS)
        ]
        for t in updaters:
            t.start()
        for t in updaters:
            t.join()
        assert kv.get("counter2").value == str(THREADS * INCREMENTS)
    assert conflicts > 0  # the threads really raced


def test_ranges_paging_and_delete_prefix(shared_cluster: Cluster) -> None:
    with Client(endpoints(shared_cluster)) as kv:
        for i in range(7):
            kv.put(f"rng:{i}", f"v{i}")
        kv.put("rnh:other", "x")
        page = kv.range("rng:", limit=3)
        assert [i.key for i in page.items] == ["rng:0", "rng:1", "rng:2"]
        assert (page.count, page.next_after) == (7, "rng:2")
        snapshot = page.revision
        kv.put("rng:0", "changed")  # after the snapshot: paging at `revision` must not see it
        assert [i.value for i in kv.scan("rng:", page_size=3, revision=snapshot)] == [
            f"v{i}" for i in range(7)
        ]
        assert [i.key for i in kv.scan(start="rng:5", end="rnh:other")] == ["rng:5", "rng:6"]
        keys = kv.range("rng:", keys_only=True)
        assert keys.items[0].value is None and keys.next_after is None
        assert kv.range("rng:", count_only=True).count == 7
        assert kv.delete_prefix("rng:").deleted == 7
        assert kv.range("rng:").count == 0
        assert kv.get("rnh:other").value == "x"


def test_transactions(shared_cluster: Cluster) -> None:
    with Client(endpoints(shared_cluster)) as kv:
        rev = kv.put("txn:a", "1").revision
        result = kv.txn(
            compare=[Compare("txn:a", "mod_revision", "==", rev)],
            success=[Put("txn:b", "2"), Get("txn:a"), Delete("txn:a")],
            failure=[Get("txn:a")],
        )
        assert result.succeeded
        assert isinstance(result.results[0], PutOpResult)
        assert result.results[0].revision == result.revision
        got = result.results[1]
        assert isinstance(got, GetOpResult) and got.items[0].value == "1"
        assert kv.get("txn:b").mod_revision == result.revision  # one revision for the lot
        with pytest.raises(NotFound):
            kv.get("txn:a")
        again = kv.txn(
            [Compare("txn:b", "value", "==", "nope")], [Put("txn:c", "x")], [Get("txn:b")]
        )
        assert not again.succeeded
        failed_get = again.results[0]
        assert isinstance(failed_get, GetOpResult) and failed_get.items[0].value == "2"


def test_binary_values_compaction_and_min_revision(shared_cluster: Cluster) -> None:
    blob = bytes(range(256))
    with Client(endpoints(shared_cluster)) as kv:
        written = kv.put("bin:blob", blob)
        assert kv.get("bin:blob").value == blob
        for node in shared_cluster.nodes.values():  # read your write on every node, stale
            with Client([node.http]) as one:
                item = one.get("bin:blob", consistency="stale", min_revision=written.revision)
                assert item.value == blob
        old = kv.put("cmp:k", "old").revision
        kv.put("cmp:k", "new")
        assert kv.compact(old + 1) == old + 1
        with pytest.raises(Compacted) as info:
            kv.get("cmp:k", revision=old)
        assert info.value.compact_revision >= old + 1


def test_async_client_on_the_data_model(shared_cluster: Cluster) -> None:
    async def main() -> None:
        async with AsyncClient(endpoints(shared_cluster)) as kv:

            async def bump() -> None:
                for _ in range(10):
                    await kv.update("acounter", lambda old: str(int(old or 0) + 1))

            await asyncio.gather(*(bump() for _ in range(4)))
            assert (await kv.get("acounter")).value == "40"
            page = await kv.range("acounter")
            assert page.count == 1
            assert [i.key async for i in kv.scan("acounter")] == ["acounter"]

    asyncio.run(main())


def test_session_writes_are_applied_once_across_a_leader_kill(make_cluster: MakeCluster) -> None:
    """Writes under sessions from both clients while the leader dies: retries are automatic,
    none is applied twice (each key's `version` counts the puts applied to it, which must equal
    the puts acknowledged)."""
    c = make_cluster()
    c.start()
    old_leader = c.wait_ready()
    done: dict[str, list[int]] = {"sess:sync": [], "sess:async": []}
    failures: list[BaseException] = []
    stop = threading.Event()

    def sync_writer(kv: Client) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                kv.put("sess:sync", str(i))  # OutcomeUnknown must not happen under sessions
            except RaftkvError as exc:
                failures.append(exc)
                return
            done["sess:sync"].append(i)

    async def async_writer() -> None:
        async with AsyncClient(endpoints(c), timeout=20) as kv:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await kv.put("sess:async", str(i))
                except RaftkvError as exc:
                    failures.append(exc)
                    return
                done["sess:async"].append(i)
            if kv._engine._session is None:
                failures.append(AssertionError("the async client wrote without a session"))

    def acked() -> int:
        return min(len(v) for v in done.values())

    with Client(endpoints(c), timeout=20) as kv:
        assert kv.put("sess:warm", "x").revision > 0
        assert kv._engine._session is not None  # the server has sessions: writes use one
        threads = [
            threading.Thread(target=sync_writer, args=(kv,)),
            threading.Thread(target=lambda: asyncio.run(async_writer())),
        ]
        for t in threads:
            t.start()
        try:
            wait_for("10 writes by each client", lambda: acked() >= 10 or failures)
            c.kill(old_leader, signal.SIGKILL)
            at_kill = acked()
            wait_for("30 more writes by each", lambda: acked() >= at_kill + 30 or failures)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not failures, failures
        for key, seqs in done.items():
            final = kv.get(key)
            assert final.value == str(seqs[-1]), key
            assert final.version == len(seqs), key  # every put applied exactly once
