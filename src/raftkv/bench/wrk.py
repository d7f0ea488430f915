"""Load from `wrk` (C, epoll, LuaJIT): the generator that is not the bottleneck.

Rules:
- One Lua script per system (`lua/raftkv.lua`, `lua/etcd.lua`, sharing `lua/common.lua`),
  configured through BENCH_* environment variables from the `LoadSpec`.
- wrk has no request-count option: in count mode each wrk thread stops itself after its share
  (`wrk.thread:stop()`), and we send SIGINT once the progress files add up to the total (wrk's
  main thread otherwise sleeps out the whole -d; SIGINT makes it print its summary at once).
- Headline latencies are wrk's own (it records every request, errors included); per-request
  samples (for plots) are paired by key in Lua and may miss error replies that carry no key.
- The generator's own CPU time comes from wait4()'s rusage, so a run can show that wrk was not
  saturated (`generator_cpu_pct`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import msgspec

from raftkv.bench.spec import LoadSpec, ProgressFn
from raftkv.bench.stats import LoadResult, Sample, merge_errors

LUA_DIR: Final = Path(__file__).with_name("lua")
POLL_S: Final = 0.1


class LoadError(Exception):
    """The load generator failed to run or to report."""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_threads(concurrency: int, cores: int | None = None) -> int:
    """wrk threads: one per two cores (the servers need the rest), never more than connections."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(concurrency, cores // 2))


def _env(spec: LoadSpec, threads: int, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_LUA_DIR": str(LUA_DIR),
        "BENCH_MODE": spec.mode,
        "BENCH_VALUE_SIZE": str(spec.value_size),
        "BENCH_KEYS": str(spec.keys),
        "BENCH_READ_RATIO": str(spec.read_ratio),
        "BENCH_CONSISTENCY": spec.consistency,
        "BENCH_PREFIX": spec.prefix,
        "BENCH_REQUESTS": str(spec.requests),
        "BENCH_THREADS": str(threads),
        "BENCH_PROGRESS": str(tmp / "progress"),
        "BENCH_OUT": str(tmp / "out.json"),
        "BENCH_SAMPLES": "1" if spec.samples else "0",
    }


def read_progress(tmp: Path, threads: int) -> tuple[int, int]:
    """(completed, failed) summed over the threads' latest progress lines."""
    done = failed = 0
    for tid in range(threads):
        try:
            lines = (tmp / f"progress.{tid}").read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in reversed(lines):
            parts = line.split()
            if len(parts) == 3:  # skip a line caught half-written
                done += int(parts[0])
                failed += int(parts[1])
                break
    return done, failed


def run_wrk(spec: LoadSpec, on_progress: ProgressFn | None = None) -> LoadResult:
    binary = wrk_binary()
    if binary is None:
        raise LoadError("wrk is not installed (apt-get install -y wrk)")
    threads = wrk_threads(spec.concurrency)
    lua = LUA_DIR / f"{spec.system}.lua"
    with tempfile.TemporaryDirectory(prefix="raftkv-wrk-") as tmpname:
        tmp = Path(tmpname)
        argv = [
            binary,
            "-t", str(threads),
            "-c", str(spec.concurrency),
            "-d", f"{math.ceil(spec.duration_s)}s",
            "--timeout", f"{math.ceil(spec.timeout_s)}s",
            "-s", str(lua),
            spec.url.rstrip("/") + "/",
        ]  # fmt: skip
        out_path = tmp / "stdout.txt"
        with open(out_path, "wb") as out:
            start = time.monotonic()
            proc = subprocess.Popen(
                argv, env=_env(spec, threads, tmp), stdout=out, stderr=subprocess.STDOUT
            )
        progress: list[tuple[float, int]] = []
        interrupted = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid != 0:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(POLL_S)
                done, failed = read_progress(tmp, threads)
                progress.append((time.monotonic() - start, done))
                if on_progress is not None:
                    on_progress(done, failed)
                if spec.requests and done >= spec.requests and not interrupted:
                    proc.send_signal(signal.SIGINT)
                    interrupted = True
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            raise
        result_path = tmp / "out.json"
        if not result_path.exists():
            words = out_path.read_text(errors="replace")[-2000:]
            raise LoadError(f"wrk exited {proc.returncode} without a result:\n{words}")
        raw: dict[str, Any] = msgspec.json.decode(result_path.read_bytes())
    cpu = usage.ru_utime + usage.ru_stime
    return _result(spec, raw, start, progress, cpu)


def _result(
    spec: LoadSpec,
    raw: dict[str, Any],
    start: float,
    progress: list[tuple[float, int]],
    cpu: float,
) -> LoadResult:
    lat = raw["latency_us"]
    socket_errors = {k: int(v) for k, v in raw["socket_errors"].items()}
    errors = merge_errors([*(t["errors"] for t in raw["threads"]), socket_errors])
    samples: list[Sample] = []
    for t in raw["threads"]:
        for end_us, lat_us, status in zip(
            t["samples_t"], t["samples_l"], t["samples_s"], strict=True
        ):
            samples.append(Sample(end_us / 1e6 - start, lat_us / 1000, 200 <= status < 300))
    samples.sort(key=lambda s: s.t)
    return LoadResult(
        generator="wrk",
        mode=spec.mode,
        concurrency=spec.concurrency,
        requests=int(raw["requests"]),
        errors=errors,
        duration_s=raw["duration_us"] / 1e6,
        latency_ms={
            "p50": lat["p50"] / 1000,
            "p90": lat["p90"] / 1000,
            "p99": lat["p99"] / 1000,
            "p999": lat["p999"] / 1000,
            "max": lat["max"] / 1000,
            "mean": lat["mean"] / 1000,
        },
        generator_cpu_s=cpu,
        samples=samples,
        progress=progress,
    )
