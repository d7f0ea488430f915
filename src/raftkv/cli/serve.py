"""`raftkv serve`: run one node (Raft runtime + HTTP API) until SIGINT/SIGTERM; SIGHUP re-reads
the `tls.peer` certificate files (rotation without restart).

Rules: an invalid config exits 2 with a message naming the field; a corrupt log or snapshot
exits 3 naming what is corrupt and where; a broken invariant at run time exits 70; a storage
failure (EIO, ENOSPC, ... at start or at run time) exits 74 (EX_IOERR) with one line naming the
operation, file, errno and what to do (storage/failure.py). A node that was removed from the
cluster exits 0 after saying so (and refuses to start again: exit 2).
`--join` and restarts from the node's own `member.json`: see `raftkv.server.joining`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import sys
import time
from typing import Annotated, Any

import structlog
import typer
from aiohttp import web

from raftkv.cli.connection import Connection, connection_options
from raftkv.ops.recovery import RecoveryError, force_new_cluster
from raftkv.raft.types import NodeId
from raftkv.runtime import testhooks
from raftkv.runtime.member_table import NodeRemoved
from raftkv.runtime.node import RaftKVNode
from raftkv.runtime.options import NodeOptions
from raftkv.server.config import ConfigError, Settings
from raftkv.server.http import create_app
from raftkv.server.joining import JoinAccess, check_not_removed, resolve, save_member_files
from raftkv.server.logging import bind_node, configure_logging
from raftkv.server.runner import http_ssl_context, run_http
from raftkv.server.tls import (
    node_client_context,
    reload_client_contexts,
    reload_server_context,
    server_context,
)
from raftkv.storage.errors import StorageError
from raftkv.storage.failure import EXIT_IOERR, StorageFailure, describe, is_storage_error
from raftkv.storage.format import refuse_newer
from raftkv.transport.tls import PeerTls, TlsConfigError

DAMAGED_DATA_ADVICE = (
    "What is safe: do NOT delete the data directory and restart this node under the same id "
    "(it would forget its term and votes and could vote twice, and lose entries it "
    "acknowledged). Keep the directory for analysis; remove this node from the cluster "
    "(`raftkv member remove THIS_ID -e LIVE_NODE`) and add a replacement with a new id and an "
    "empty data directory (`raftkv serve --node-id NEW_ID --join http://LIVE_NODE "
    "--raft-address ... --http-address ...`; docs/durability.md, 'Replacing a damaged node')"
)
_STORAGE_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def node_options(s: Settings, initial_voters: tuple[str, ...] | None = None) -> NodeOptions:
    return NodeOptions(
        node_id=NodeId(s.node_id),
        cluster_name=s.cluster_name,
        data_dir=s.data_dir,
        raft_listen=(s.raft_listen.host, s.raft_listen.port),
        raft_advertise=str(s.raft_address),
        http_advertise=str(s.http_address),
        peers_raft={NodeId(n): (a.host, a.port) for n, a in s.raft_peers.items()},
        peers_http={NodeId(n): str(a) for n, a in s.http_peers.items()},
        bootstrap_id=NodeId(s.bootstrap_id) if s.bootstrap_id in s.raft_peers else None,
        source_host=s.raft_listen.host if s.raft_listen.host not in ("0.0.0.0", "::") else None,
        tick_ms=float(s.tick_ms),
        election_ticks=s.election_ticks,
        lease_ticks=s.lease_ticks,
        snapshot_every=s.snapshot_every,
        snapshot_keep_entries=s.snapshot_keep_entries,
        snapshot_builder=s.config.raft.snapshot_builder,
        max_snapshot_bytes=s.max_snapshot_bytes,
        leader_wait_s=s.leader_wait_ms / 1000.0,
        request_timeout_s=s.request_timeout_ms / 1000.0,
        metrics=s.metrics,
        initial_voters=tuple(NodeId(v) for v in initial_voters) if initial_voters else None,
        auto_promote=s.config.cluster.auto_promote,
        peer_tls=PeerTls(s.tls_peer) if s.tls_peer is not None else None,
        peer_forwarding=s.config.server.forward_over_peer,
    )


def _tune_gc() -> None:
    """Fewer, cheaper cyclic-GC passes: the long-lived objects of startup are frozen out of
    every collection, and the young generation is collected less often. A full collection
    over a busy node's heap stalled the event loop for tens of milliseconds, long enough to
    delay heartbeats past the 100 ms election timeout.

    Called BEFORE the node starts: the one full collection (60-180 ms over the imported
    modules on this box) then cannot stall a node that already leads — run after start-up,
    it cost the bootstrap leader its term in most benchmark starts (issue 12).
    `_freeze_app` later freezes what the node and the HTTP app added, without a collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)
    gc.callbacks.append(_log_long_gc)


def _freeze_app() -> None:
    """Move the node's and the HTTP app's long-lived objects (routes, sessions, SSL contexts)
    out of the collected generations too: O(1), no collection, no stall."""
    gc.freeze()


_GC_PAUSE_WARN_S = 0.02  # a fifth of the 100 ms election timeout
_gc_started = 0.0


def _log_long_gc(phase: str, info: dict[str, int]) -> None:
    """Names a collection that stalls the loop, so an `event loop stalled` line can be told
    apart from CPU starvation or a long loop turn (issue 12: stalls that cost leadership)."""
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started
    if took > _GC_PAUSE_WARN_S:
        structlog.get_logger("raftkv.serve").warning(
            "long gc pause",
            generation=info.get("generation"),
            took_ms=round(took * 1000, 1),
            collected=info.get("collected"),
        )


def reload_peer_tls(tls: PeerTls | None) -> bool:
    """SIGHUP: re-read the `tls.peer` files; on failure keep the current ones. Logged either way."""
    log = structlog.get_logger("raftkv.serve")
    if tls is None:
        log.info("tls_reload_skipped", reason="tls.peer is not configured")
        return False
    try:
        tls.reload()
    except TlsConfigError as exc:
        log.error("tls_reload_failed", part="peer", error=str(exc), keeping="previous files")
        return False
    log.info("tls_reloaded", part="peer", cert=str(tls.files.cert), ca=str(tls.files.ca))
    return True


def reload_tls(tls: PeerTls | None, runner: web.AppRunner, settings: Settings) -> None:
    """SIGHUP: re-read the peer and the HTTPS files (each keeps its old files on failure):
    the peer transport's, the HTTPS listener's and the node-to-node client contexts'
    (forwarding, status probes, membership calls)."""
    reload_peer_tls(tls)
    log = structlog.get_logger("raftkv.serve")
    try:
        count = reload_client_contexts(settings)
    except TlsConfigError as exc:
        log.error("tls_reload_failed", part="client", error=str(exc), keeping="previous files")
    else:
        if count:
            log.info("tls_reloaded", part="client", contexts=count)
    ctx = http_ssl_context(runner)
    if ctx is None:
        return
    try:
        reload_server_context(ctx, settings)
    except TlsConfigError as exc:
        log.error("tls_reload_failed", part="http", error=str(exc), keeping="previous files")
        return
    assert settings.tls_http is not None
    log.info("tls_reloaded", part="http", cert=str(settings.tls_http.cert))


async def serve_node(settings: Settings, initial_voters: tuple[str, ...] | None = None) -> int:
    node = RaftKVNode(node_options(settings, initial_voters))
    _tune_gc()  # before the node can lead: the full collection stalls the loop
    await node.start()
    try:
        runner = await run_http(create_app(node, settings), settings)
    except BaseException:
        # E.g. the HTTP port is taken: the runtime is already up; stop it cleanly (pending
        # hard state saved, state synced, files closed) before reporting the failure.
        await node.stop()
        raise
    _freeze_app()  # after the HTTP app is up: its routes, sessions and SSL contexts too
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Certificate rotation without a restart: new connections use the re-read files.
    loop.add_signal_handler(signal.SIGHUP, reload_tls, node.opts.peer_tls, runner, settings)
    fatal = node.driver.fatal
    assert fatal is not None
    stop_wait = asyncio.ensure_future(stop.wait())
    waits: list[asyncio.Future[Any]] = [stop_wait, fatal]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if fatal.done():
        failure = fatal.result()
        code = EXIT_IOERR if isinstance(failure, StorageFailure) else 70
        if isinstance(failure, NodeRemoved):
            code = 0  # removed from the cluster: a normal end (the driver logged why)
        if code == 70:
            # (A storage failure's one line is already in the log, on stderr.)
            print(f"raftkv: node {settings.node_id} stopping: {failure}", file=sys.stderr)
        if code != 0 and (linger := testhooks.failure_linger_s()) > 0:
            await asyncio.sleep(linger)  # tests only: requests reach the failed node meanwhile
    stop_wait.cancel()
    if (halted := node.driver.halted) is not None and not fatal.done():
        # Asked to stop while halted (runtime/halt.py): say once more why it was halted.
        print(
            f"raftkv: node {settings.node_id} stopping as asked; it was halted at committed "
            f"entry {halted.index}: {halted.error}. What to do: {halted.action}",
            file=sys.stderr,
        )
    if code == 0:
        # Graceful stop: hand leadership over, refuse new requests (503 node_stopping), let
        # in-flight writes finish, then close HTTP and flush. Bounded well under 10 s.
        await node.driver.hand_off(timeout_s=3.0)
        await node.driver.drain(timeout_s=2.0)
    node.driver.abort_pending()  # handlers answer now instead of waiting out their timeout
    await runner.cleanup()
    await node.stop()
    return code


def _force_new_cluster(settings: Settings) -> None:
    try:
        done = force_new_cluster(settings.data_dir, settings.node_id)
    except RecoveryError as exc:
        print(f"raftkv: --force-new-cluster: {exc}", file=sys.stderr)
        raise typer.Exit(2 if exc.misuse else 1) from None
    print(
        f"raftkv: --force-new-cluster: {settings.node_id} is now the only voter, at index "
        f"{done.index} (term {done.term}; {done.entries_applied} log entries applied, "
        f"{done.beyond_commit} past the persisted commit index). Add members back with the "
        "membership API; never restart the old members with their old data.",
        file=sys.stderr,
    )


def _run(settings: Settings, initial_voters: tuple[str, ...] | None = None) -> int:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        return runner.run(serve_node(settings, initial_voters))


def register(app: typer.Typer) -> None:
    @app.command()
    @connection_options(endpoints=False, json=False, timeout=None)
    def serve(
        config: Annotated[str | None, typer.Option("--config", help="YAML config file")] = None,
        node_id: Annotated[str | None, typer.Option("--node-id", help="this node's id")] = None,
        data_dir: Annotated[str | None, typer.Option("--data-dir")] = None,
        http_port: Annotated[int | None, typer.Option("--http-port")] = None,
        raft_port: Annotated[int | None, typer.Option("--raft-port")] = None,
        log_level: Annotated[str | None, typer.Option("--log-level")] = None,
        log_format: Annotated[str | None, typer.Option("--log-format")] = None,
        join: Annotated[
            str | None,
            typer.Option("--join", help="join the cluster at this HTTP URL (reads no config file)"),
        ] = None,
        raft_address: Annotated[
            str | None,
            typer.Option("--raft-address", help="with --join: this node's Raft host:port"),
        ] = None,
        http_address: Annotated[
            str | None,
            typer.Option("--http-address", help="with --join: this node's HTTP host:port"),
        ] = None,
        force_new_cluster: Annotated[
            bool,
            typer.Option(
                "--force-new-cluster",
                help="Quorum lost: make this node's data a one-voter cluster, then serve "
                "(docs/operations.md)",
            ),
        ] = False,
        *,
        conn: Connection,
    ) -> None:
        """Run one node of the cluster (flags > env > config file > defaults). The TLS and
        auth flags are for --join's requests (the node's own TLS comes from the config)."""
        overrides = {
            "config": config,
            "node_id": node_id,
            "data_dir": data_dir,
            "http_port": http_port,
            "raft_port": raft_port,
            "log_level": log_level,
            "log_format": log_format,
        }
        try:
            access = None
            if join is not None:
                access = JoinAccess(
                    conn.cacert, conn.cert, conn.key, not conn.insecure, conn.auth_header()
                )
            resolved = resolve(
                overrides,
                join=join,
                raft_address=raft_address,
                http_address=http_address,
                access=access,
            )
            settings = resolved.settings
            # Load the TLS files now, so that a bad pair fails here, naming the field.
            server_context(settings)
            client_ctx = node_client_context(settings)
            if settings.tls_peer is not None:
                PeerTls(settings.tls_peer)
            has_data = (settings.data_dir / "raft.db").exists()
            if (
                has_data
                and not resolved.joined
                and (peer := check_not_removed(settings, ctx=client_ctx))
            ):
                print(
                    f"raftkv: refusing to start: {settings.node_id} was removed from the cluster "
                    f"(so says {peer}); it cannot rejoin under this id: start a new node with a "
                    "new id and an empty data directory",
                    file=sys.stderr,
                )
                raise typer.Exit(2)
            try:
                refuse_newer(settings.data_dir)  # before anything is written into it
            except StorageError as exc:
                print(f"raftkv: refusing to start: {exc}", file=sys.stderr)
                raise typer.Exit(3) from None
            try:
                save_member_files(settings, resolved.initial_voters)
            except OSError as exc:
                if exc.errno not in _STORAGE_ERRNOS:
                    raise
                where = exc.filename or settings.data_dir
                print(f"raftkv: {describe(exc, 'write member file', where)}", file=sys.stderr)
                raise typer.Exit(EXIT_IOERR) from None
        except (ConfigError, TlsConfigError, ValueError) as exc:
            print(f"raftkv: invalid configuration: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        configure_logging(settings.log_level, settings.log_format)
        bind_node(settings.node_id)
        try:
            if force_new_cluster:
                _force_new_cluster(settings)
            code = _run(settings, resolved.initial_voters)
        except NodeRemoved as exc:
            print(f"raftkv: refusing to start: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        except StorageFailure as exc:
            print(f"raftkv: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_IOERR) from None
        except StorageError as exc:
            print(f"raftkv: refusing to start: {exc}. {DAMAGED_DATA_ADVICE}", file=sys.stderr)
            raise typer.Exit(3) from None
        except OSError as exc:
            if exc.errno in _STORAGE_ERRNOS:
                # (An fsync of a directory carries no file name: name the node's directory.)
                where = exc.filename or settings.data_dir
                print(f"raftkv: {describe(exc, 'start-up I/O', where)}", file=sys.stderr)
                raise typer.Exit(EXIT_IOERR) from None
            print(f"raftkv: cannot start: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            print(f"raftkv: {describe(exc, 'start-up I/O', settings.data_dir)}", file=sys.stderr)
            raise typer.Exit(EXIT_IOERR) from None
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        raise typer.Exit(code)
