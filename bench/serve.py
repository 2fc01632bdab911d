"""Benchmark `mmtune serve`: requests/s and time to first token at 1, 4 and 16 concurrent clients.

Starts `mmtune serve MODEL` as a subprocess on a free port (the embedded SmolLM2-135M-Instruct
by default), then for each concurrency level runs that many clients, each sending streaming
chat requests back to back (greedy, fixed answer length), and prints a table:
requests/s, completion tokens/s, and time to first token (median and p90) in ms.

    python bench/serve.py [--model M] [--levels 1 4 16] [--requests-per-client 3] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Explain in two sentences why the sky is blue."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, concurrency: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        "-m",
        "mmtune.cli",
        "serve",
        model,
        "--port",
        str(port),
        "--max-concurrency",
        str(concurrency),
    ]
    return subprocess.Popen(cmd, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not become ready")


async def one_request(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first content chunk, completion tokens) of one streaming request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start), tokens


async def level(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> list[tuple[float, int]]:
            return [await one_request(client, url, model, max_tokens) for _ in range(per_client)]

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker() for _ in range(clients))) for r in rs]
        wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "req_per_s": len(results) / wall,
        "tok_per_s": sum(r[1] for r in results) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttft),
        "ttft_p90_ms": 1000 * ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-concurrency", type=int, default=16, help="the server's --max-concurrency")
    p.add_argument("--url", help="benchmark a server already running at this URL instead of starting one")
    args = p.parse_args()
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.model, port, args.max_concurrency)
    try:
        wait_ready(url, proc) if proc else None
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        asyncio.run(level(url, model, 1, 1, 4))  # warm-up
        rows = [
            asyncio.run(level(url, model, c, args.requests_per_client, args.max_tokens)) for c in args.levels
        ]
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    print(
        f"\nmmtune serve {model}: {args.max_tokens} tokens per answer, greedy, "
        f"server --max-concurrency {args.max_concurrency}"
    )
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['req_per_s']:>7.2f} {r['tok_per_s']:>7.1f} "
            f"{r['ttft_p50_ms']:>12.0f} {r['ttft_p90_ms']:>12.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
