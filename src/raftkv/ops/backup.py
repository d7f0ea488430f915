"""`raftkv snapshot save` and `status`: download a consistent snapshot from the leader, check it.

Rules:
- The leader is found through `/cluster/status` of the first endpoint that answers; the snapshot
  comes from the leader's `GET /cluster/snapshot` (server/backup_routes.py), which is
  linearizable: every write acknowledged before the request is in it.
- Nothing reaches FILE unless it is complete and checked: the body goes to `FILE.part`, is
  hashed while written, and must match Content-Length and the server's SHA-256; then every frame
  is read back (`SnapshotReader`: CRCs, counts, trailer), the file is fsynced and renamed to FILE,
  and `FILE.sha256` (the `sha256sum` format) is written beside it. `restore` checks both.
- Endpoints, TLS and credentials come from `raftkv.client.options.ClientOptions`, as for every
  client of the API; credentials are never printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from raftkv.client.options import ClientOptions
from raftkv.codec.mvcc import META_PREFIX, decode_u64
from raftkv.runtime.backup import file_sha256
from raftkv.storage.errors import CorruptSnapshotError
from raftkv.storage.fsutil import fsync_dir
from raftkv.storage.snapshot_file import SnapshotReader

CHUNK: Final = 1 << 20
_REVISION_RECORD: Final = META_PREFIX + b"revision"  # storage/mvcc_image.py's meta record
SNAPSHOT_PATH: Final = "/cluster/snapshot"


class BackupError(Exception):
    """The snapshot could not be saved or is not a valid snapshot; the message says why."""


@dataclass(frozen=True, slots=True)
class SnapshotFacts:
    file: str
    index: int  # the last log index the snapshot reflects
    term: int
    revision: int | None  # the store's revision at that index (None: a pre-MVCC snapshot)
    voters: list[str]  # the configuration recorded in the snapshot
    learners: list[str]
    records: int  # records of the state image (keys and the state's own bookkeeping)
    size: int  # bytes
    sha256: str
    node: str | None = None  # the node that made it (save only)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_facts(path: Path) -> SnapshotFacts:
    """Read and verify a whole snapshot file (every frame's CRC, the trailer's counts)."""
    try:
        with open(path, "rb") as f:
            reader = SnapshotReader(f, str(path))
            records, revision = 0, None
            for key, value in reader.records():
                records += 1
                if key == _REVISION_RECORD:
                    revision = decode_u64(value)
            size = f.tell()
    except CorruptSnapshotError as exc:
        raise BackupError(str(exc)) from exc
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from exc
    h = reader.header
    return SnapshotFacts(
        file=str(path),
        index=h.index,
        term=h.term,
        revision=revision,
        voters=list(h.conf.voters),
        learners=list(h.conf.learners),
        records=records,
        size=size,
        sha256=file_sha256(path),
    )


def check_sidecar(path: Path, sha256: str) -> bool:
    """False when there is no `FILE.sha256`; BackupError when it names another digest."""
    side = sidecar(path)
    if not side.exists():
        return False
    words = side.read_text(encoding="utf-8", errors="replace").split()
    if not words or words[0].lower() != sha256:
        raise BackupError(f"{path}: SHA-256 {sha256} does not match {side}")
    return True


# -- save -------------------------------------------------------------------------------------


def _connection(url: str, options: ClientOptions, timeout_s: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            host, port, timeout=timeout_s, context=options.ssl_context
        )
    return http.client.HTTPConnection(host, port, timeout=timeout_s)


def _headers(options: ClientOptions) -> dict[str, str]:
    return {"Authorization": options.auth_header} if options.auth_header else {}


def _error_words(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {status}"
    if isinstance(doc, dict) and "error" in doc:
        return f"HTTP {status} {doc.get('code')}: {doc['error']}"
    return f"HTTP {status}"


def find_leader(options: ClientOptions) -> str:
    """The leader's base URL, asked of each endpoint in turn until one knows it."""
    problems = []
    for base in options.endpoints:
        conn = _connection(base, options, options.request_timeout_s)
        try:
            conn.request("GET", "/cluster/status", headers=_headers(options))
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{base}: {exc}")
            continue
        finally:
            conn.close()
        if resp.status != 200:
            problems.append(f"{base}: {_error_words(resp.status, body)}")
            continue
        try:
            status = json.loads(body)
            leader = status["leader"]
            address = status["nodes"][leader]["http_address"] if leader else None
        except (ValueError, KeyError, TypeError):
            problems.append(f"{base}: not a raftkv /cluster/status reply")
            continue
        if not address:
            problems.append(f"{base}: no leader known")
            continue
        return f"{urllib.parse.urlsplit(base).scheme}://{address}"
    raise BackupError("no leader found: " + "; ".join(problems))


def save_snapshot(
    path: Path, options: ClientOptions, say: Callable[[str], None] = lambda _: None
) -> SnapshotFacts:
    leader = find_leader(options)
    say(f"downloading a snapshot from the leader at {leader}")
    part = path.with_name(path.name + ".part")
    try:
        node, want_sha = _download(leader, options, part)
        facts = read_facts(part)
        if facts.sha256 != want_sha:
            raise BackupError(f"SHA-256 mismatch: the server sent {want_sha}, got {facts.sha256}")
        os.replace(part, path)
        sidecar(path).write_text(f"{facts.sha256}  {path.name}\n", encoding="utf-8")
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return SnapshotFacts(**{**facts.to_json(), "file": str(path), "node": node})


def _download(leader: str, options: ClientOptions, part: Path) -> tuple[str | None, str]:
    """Stream the leader's snapshot into `part` (fsynced); returns (node id, server SHA-256)."""
    # No overall timeout: a big state takes as long as it takes. The socket timeout bounds
    # each wait for data instead.
    conn = _connection(leader, options, max(options.request_timeout_s, 30.0))
    try:
        try:
            conn.request("GET", SNAPSHOT_PATH, headers=_headers(options))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise BackupError(f"{leader}{SNAPSHOT_PATH}: {exc}") from exc
        if resp.status != 200:
            raise BackupError(f"{leader}{SNAPSHOT_PATH}: {_error_words(resp.status, resp.read())}")
        want_sha = resp.getheader("X-Raftkv-Snapshot-Sha256", "").lower()
        length = int(resp.getheader("Content-Length", "-1"))
        digest, got = hashlib.sha256(), 0
        try:
            with open(part, "wb") as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as exc:
            raise BackupError(f"download cut short after {got} bytes: {exc}") from exc
        if got != length:
            raise BackupError(f"download cut short: {got} of {length} bytes")
        if digest.hexdigest() != want_sha:
            raise BackupError(f"SHA-256 mismatch: the server sent {want_sha}")
        return resp.getheader("X-Raftkv-Node-Id"), want_sha
    finally:
        conn.close()
