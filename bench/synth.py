"""Synthesis benchmarks: symbolic problems per second per core, and openai-client overhead per request.

    python -m mathforge.bench.synth [--quick]

- ``symbolic``: verified problems generated per second on one pinned core, per difficulty and for the
  normal/hard mix (the generator alone), plus a whole `synthesize` run (journal, filters, files).
- ``client``: 256 concurrent chat requests against the loopback server running in another process
  (zero latency). The client's CPU time per request is the overhead the bar (≤ 1 ms) is about; the
  peers are the bare `openai.AsyncOpenAI` client under the same semaphore, with its default transport
  and over aiohttp, so the differences show what the transport costs and what our retry /
  load-balancing / accounting layer (and its raw-JSON parsing) adds or saves.
Results go to bench/results/<device>/synth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

from mathforge.backends import OpenAIBackend
from mathforge.bench.common import environment, write_result
from mathforge.synth import config, run
from mathforge.synth.symbolic import Generator


def bench_symbolic(n: int) -> list[dict]:
    rows = []
    for label, kwargs in [
        ("difficulty 1 (easy)", {"difficulty": 1}),
        ("difficulty 2", {"difficulty": 2}),
        ("difficulty 3", {"difficulty": 3}),
        ("difficulty 4", {"difficulty": 4}),
        ("difficulty 5", {"difficulty": 5}),
        ("all levels", {}),
    ]:
        gen = Generator(**kwargs)
        start = time.process_time()
        for i in range(n):
            gen.problem(i)
        seconds = time.process_time() - start
        rows.append(
            {"name": f"symbolic {label}", "problems": n, "cpu_seconds": seconds, "problems_per_s_per_core": n / seconds}
        )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(
            None,
            [
                f'run.output="{tmp}/r"',
                f"run.items={n}",
                "run.progress=false",
                "symbolic.mix={normal = 0.8, hard = 0.2}",
                "quality.near_dedup=false",
                "quality.decontaminate=false",
            ],
        )
        start = time.process_time()
        manifest = run.synthesize(cfg)
        seconds = time.process_time() - start
    rows.append(
        {
            "name": "synthesize() symbolic run (journal+dedup+files)",
            "problems": n,
            "cpu_seconds": seconds,
            "problems_per_s_per_core": n / seconds,
            "rows_written": manifest["rows"],
        }
    )
    return rows


async def _bare(url: str, requests: int, concurrency: int, aiohttp: bool = False) -> None:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    client = AsyncOpenAI(
        base_url=url, api_key="x", max_retries=0, http_client=DefaultAioHttpClient() if aiohttp else None
    )
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limit:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=16
            )

    await asyncio.gather(*(one(i) for i in range(requests)))
    await client.close()


async def _ours(url: str, requests: int, concurrency: int) -> None:
    backend = OpenAIBackend([url], "m", concurrency=concurrency)
    await asyncio.gather(
        *(backend.chat([{"role": "user", "content": f"q {i}"}], max_tokens=16) for i in range(requests))
    )
    await backend.aclose()


def bench_client(requests: int, concurrency: int = 256) -> list[dict]:
    server = subprocess.Popen([sys.executable, "-m", "mathforge.bench.loopback"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        rows = []
        peers = [
            ("bare openai.AsyncOpenAI (peer, default transport)", _bare),
            ("bare openai.AsyncOpenAI (peer, aiohttp transport)", functools.partial(_bare, aiohttp=True)),
            ("mathforge OpenAIClient (aiohttp, plain-JSON post)", _ours),
        ]
        for name, fn in peers:
            asyncio.run(fn(url, 256, concurrency))  # warm up connections and imports
            wall, cpu = time.perf_counter(), time.process_time()
            asyncio.run(fn(url, requests, concurrency))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows.append(
                {
                    "name": name,
                    "requests": requests,
                    "concurrency": concurrency,
                    "client_cpu_ms_per_request": 1000 * cpu / requests,
                    "wall_ms_per_request": 1000 * wall / requests,
                    "requests_per_s": requests / wall,
                }
            )
        return rows
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer problems and requests.")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    symbolic = bench_symbolic(5000 if args.quick else 30000)
    client = bench_client(1024 if args.quick else 4096)
    table = Table(title="synthesis benchmarks (one core)")
    for col in ("name", "rate", "overhead"):
        table.add_column(col)
    for r in symbolic:
        table.add_row(r["name"], f"{r['problems_per_s_per_core']:,.0f} problems/s/core", "")
    for r in client:
        table.add_row(
            r["name"], f"{r['requests_per_s']:,.0f} req/s", f"{r['client_cpu_ms_per_request']:.3f} ms CPU/request"
        )
    Console().print(table)
    path = write_result(
        "synth",
        {
            "environment": environment("openai"),
            "symbolic": symbolic,
            "client": client,
            "bars": {"symbolic_problems_per_s_per_core": 2000, "client_ms_per_request": 1.0},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
