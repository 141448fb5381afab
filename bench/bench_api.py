"""API benchmark: guest tokens and the session list, over loopback, against real PostgreSQL and LiveKit.

The API runs as one process pinned to one core (`--api-cpu`), the way `python -m api` runs; a Python
aiohttp load generator runs in a second process (pinned to `--load-cpu`) with N concurrent connections,
for a bounded number of requests and time. The bench makes a throwaway database at DATABASE_URL's server
and starts its own LiveKit server (`--dev`, free ports) for the session's room. Prints figures only.

    .venv/bin/python bench/bench_api.py [--connections 64] [--requests 20000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_KEY = "bench-admin-key"
LIVEKIT_KEY, LIVEKIT_SECRET = "devkey", "secret"


def _free_port(count: int = 1) -> int:
    """A port p such that p .. p+count-1 were free a moment ago."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            sockets = []
            for offset in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError("no free ports")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


# --- the API process ---------------------------------------------------------------------------------


def serve(port: int, cpu: int | None) -> None:
    _pin(cpu)
    from aiohttp import web

    from api.app import create_app
    from common.logs import configure_logging
    from common.settings import Settings

    settings = Settings(api_port=port, log_level="WARNING")
    configure_logging(settings.log_level)
    web.run_app(create_app(settings), host="127.0.0.1", port=port, access_log=None, print=None)


# --- the load generator process -----------------------------------------------------------------------


async def _load(
    url: str, method: str, body: bytes | None, headers: dict[str, str], args: Any
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.perf_counter() + args.seconds
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal issued, errors
            while issued < args.requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                try:
                    async with http.request(method, url, data=body, headers=headers) as response:
                        await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                        if response.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        # Warm up the connections and the server's pool.
        warm_until = args.requests
        args.requests = min(200, warm_until)
        await asyncio.gather(*(worker() for _ in range(args.connections)))
        warmup = issued
        latencies.clear()
        errors, issued, statuses = 0, 0, {}
        args.requests = warm_until
        deadline = time.perf_counter() + args.seconds

        began, cpu_began = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(args.connections)))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began

    latencies.sort()

    def quantile(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
        )

    return {
        "requests": len(latencies),
        "load_cpu_busy": round(cpu / elapsed, 2) if elapsed else 0.0,
        "warmup": warmup,
        "errors": errors,
        "statuses": statuses,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(quantile(0.50), 2),
        "p99_ms": round(quantile(0.99), 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
    }


def load(args: argparse.Namespace) -> None:
    _pin(args.load_cpu)
    if args.scenario == "token":
        url = f"{args.url}/api/sessions/{args.slug}/token"
        method, body = "POST", json.dumps({"display_name": "Bench guest"}).encode()
        headers = {"Content-Type": "application/json"}
    else:
        url, method, body = f"{args.url}/api/sessions?limit=20", "GET", None
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    result = asyncio.run(_load(url, method, body, headers, args))
    print(json.dumps(result), flush=True)


# --- orchestration -------------------------------------------------------------------------------------


async def _wait_http(url: str, within: float, process: asyncio.subprocess.Process | None = None) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"{url}: the process exited with {process.returncode}")
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def _stop(process: asyncio.subprocess.Process | None) -> None:
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()


async def main(args: argparse.Namespace) -> None:
    from common.settings import Settings

    base_url = Settings().database_url
    db_name = f"roomscribe_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    await admin.close()
    # Loopback PostgreSQL: no TLS (asyncpg would otherwise negotiate it, "prefer").
    database_url = urlunsplit(urlsplit(base_url)._replace(path=f"/{db_name}", query="sslmode=disable"))

    livekit: asyncio.subprocess.Process | None = None
    api: asyncio.subprocess.Process | None = None
    workdir = tempfile.TemporaryDirectory(prefix="roomscribe-bench-")
    try:
        binary = os.environ.get("ROOMSCRIBE_LIVEKIT_SERVER", str(ROOT / ".tools" / "bin" / "server"))
        lk_port = _free_port(3)
        config = Path(workdir.name) / "livekit.yaml"
        config.write_text(
            f'port: {lk_port}\nbind_addresses: ["127.0.0.1"]\n'
            f"rtc:\n  tcp_port: {lk_port + 1}\n  udp_port: {lk_port + 2}\n  use_external_ip: false\n"
            f"  node_ip: 127.0.0.1\nkeys:\n  {LIVEKIT_KEY}: {LIVEKIT_SECRET}\nlogging:\n  level: warn\n"
        )
        log = (Path(workdir.name) / "livekit.log").open("wb")
        livekit = await asyncio.create_subprocess_exec(
            binary, "--dev", "--config", str(config), stdout=log, stderr=log
        )
        await _wait_http(f"http://127.0.0.1:{lk_port}", 30, livekit)

        api_port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "LIVEKIT_URL": f"ws://127.0.0.1:{lk_port}",
            "LIVEKIT_API_KEY": LIVEKIT_KEY,
            "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
            "ROOMSCRIBE_API_KEY": ADMIN_KEY,
            "PYTHONPATH": str(ROOT),
        }
        api = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "_serve", "--port", str(api_port), "--api-cpu", str(args.api_cpu),
            env=env, cwd=ROOT,
        )  # fmt: skip
        api_url = f"http://127.0.0.1:{api_port}"
        await _wait_http(f"{api_url}/readyz", 60, api)

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            for i in range(50):  # something to list
                async with http.post(f"{api_url}/api/sessions", json={"title": f"Bench {i}"}) as response:
                    assert response.status == 201, await response.text()
                    slug = (await response.json())["slug"]

        print(
            f"API pinned to CPU {args.api_cpu}, load generator to CPU {args.load_cpu} "
            f"({os.cpu_count()} CPUs; PostgreSQL and LiveKit unpinned), {args.connections} connections"
        )
        for scenario in args.scenarios:
            loader = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "_load", "--url", api_url, "--slug", slug, "--scenario", scenario,
                "--connections", str(args.connections), "--requests", str(args.requests),
                "--seconds", str(args.seconds), "--load-cpu", str(args.load_cpu),
                stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
            )  # fmt: skip
            api_cpu_before, wall_before = _cpu_seconds(api.pid), time.perf_counter()
            out, _ = await loader.communicate()
            api_cpu = _cpu_seconds(api.pid) - api_cpu_before
            wall = time.perf_counter() - wall_before
            result = json.loads(out.decode().strip().splitlines()[-1])
            label = (
                "POST /api/sessions/{slug}/token (guest)"
                if scenario == "token"
                else "GET /api/sessions?limit=20"
            )
            served = result["requests"] + result["errors"] + result["warmup"]
            print(
                f"{label}: {result['requests']} requests in {result['seconds']:.2f} s, "
                f"{result['rps']:.1f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"errors {result['errors']}; API process CPU {api_cpu / served * 1e6:.0f} us/request "
                f"(one core at that cost: {served / api_cpu:.0f} req/s), "
                f"its core {100 * api_cpu / wall:.0f}% busy; load generator's core "
                f"{100 * result['load_cpu_busy']:.0f}% busy"
            )
    finally:
        await _stop(api)
        await _stop(livekit)
        workdir.cleanup()
        admin = await asyncpg.connect(base_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "_serve", "_load"])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20_000, help="per scenario")
    parser.add_argument("--seconds", type=float, default=15.0, help="per scenario, at most")
    parser.add_argument("--api-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--scenarios", nargs="+", default=["token", "list"], choices=["token", "list"])
    # internal
    parser.add_argument("--port", type=int)
    parser.add_argument("--url")
    parser.add_argument("--slug")
    parser.add_argument("--scenario", choices=["token", "list"])
    args = parser.parse_args()
    if args.mode == "_serve":
        serve(args.port, args.api_cpu)
    elif args.mode == "_load":
        load(args)
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
