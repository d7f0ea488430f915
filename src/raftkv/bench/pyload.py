"""The pure-Python load generator (aiohttp), for machines without wrk and for tests.

Rules:
- The same requests as the Lua scripts (`spec.py` names the keys): `concurrency` workers, each
  on its own keep-alive connection of one pooled session, issue requests back to back.
- Every request's latency is recorded, so percentiles are exact; errors are classified like the
  Lua scripts do (`http_<status>:<code>`) plus `timeout`, `connect` and `read` for the network.
- One Python process tops out at a few thousand requests per second: well below what wrk does.
  The result reports its own CPU use (`generator_cpu_pct`) so a saturated run shows it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from typing import Final

import aiohttp
import msgspec

from raftkv.bench.spec import LoadSpec, ProgressFn
from raftkv.bench.stats import LoadResult, Sample, latency_summary, merge_errors

PROGRESS_EVERY_S: Final = 0.1


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class _Run:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.value = "x" * spec.value_size
        self.issued = 0
        self.samples: list[Sample] = []
        self.errors: dict[str, int] = {}
        self.failed = 0
        self.start = 0.0
        self.deadline = 0.0
        self.rng = random.Random()

    def _next(self) -> bool:
        spec = self.spec
        if spec.requests and self.issued >= spec.requests:
            return False
        if time.monotonic() >= self.deadline:
            return False
        self.issued += 1
        return True

    def _request(self, worker: int, seq: int) -> tuple[str, str, bytes | None, dict[str, str]]:
        spec = self.spec
        is_read = spec.mode == "get" or (
            spec.mode == "mixed" and self.rng.random() < spec.read_ratio
        )
        if is_read or spec.mode == "mixed":
            key = f"{spec.prefix}-{self.rng.randrange(spec.keys)}"
        else:
            key = f"{spec.prefix}-{worker}-{seq}"
        base = spec.url.rstrip("/")
        if spec.system == "etcd":
            json = {"Content-Type": "application/json"}
            if is_read:
                body = {"key": _b64(key), "serializable": spec.consistency == "stale"}
                return "POST", f"{base}/v3/kv/range", msgspec.json.encode(body), json
            body = {"key": _b64(key), "value": _b64(self.value)}
            return "POST", f"{base}/v3/kv/put", msgspec.json.encode(body), json
        if is_read:
            return "GET", f"{base}/kv/{key}?consistency={spec.consistency}", None, {}
        return "PUT", f"{base}/kv/{key}", self.value.encode(), {"Content-Type": "text/plain"}

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.failed += 1

    async def worker(self, session: aiohttp.ClientSession, worker: int) -> None:
        seq = 0
        while self._next():
            seq += 1
            method, url, body, headers = self._request(worker, seq)
            t0 = time.monotonic()
            ok = False
            try:
                async with session.request(method, url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    ok = 200 <= resp.status < 300
                    if not ok:
                        self._error(_http_kind(resp.status, raw))
            except TimeoutError:
                self._error("timeout")
            except aiohttp.ClientConnectorError:
                self._error("connect")
            except (aiohttp.ClientError, OSError):
                self._error("read")
            t1 = time.monotonic()
            self.samples.append(Sample(t1 - self.start, (t1 - t0) * 1000, ok))


def _http_kind(status: int, raw: bytes) -> str:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    return f"http_{status}:{code}" if isinstance(code, str) else f"http_{status}"


async def run_python(spec: LoadSpec, on_progress: ProgressFn | None = None) -> LoadResult:
    run = _Run(spec)
    cpu0 = time.process_time()
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    progress: list[tuple[float, int]] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as session:
        run.start = time.monotonic()
        run.deadline = run.start + spec.duration_s
        workers = [asyncio.create_task(run.worker(session, w)) for w in range(spec.concurrency)]
        done_all = asyncio.gather(*workers)
        while not done_all.done():
            await asyncio.wait([done_all], timeout=PROGRESS_EVERY_S)
            progress.append((time.monotonic() - run.start, len(run.samples)))
            if on_progress is not None:
                on_progress(len(run.samples), run.failed)
        await done_all
        duration = time.monotonic() - run.start
    samples = sorted(run.samples, key=lambda s: s.t)
    return LoadResult(
        generator="python",
        mode=spec.mode,
        concurrency=spec.concurrency,
        requests=len(samples),
        errors=merge_errors([run.errors]),
        duration_s=duration,
        latency_ms=latency_summary(s.latency_ms for s in samples),
        generator_cpu_s=time.process_time() - cpu0,
        samples=samples if spec.samples else [],
        progress=progress,
    )
