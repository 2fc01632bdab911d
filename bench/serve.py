"""Benchmark `mmtune serve`: requests/s and time to first token at 1, 4, 16 and 32 concurrent clients,
beside llama.cpp on the same machine.

Starts `mmtune serve MODEL` as a subprocess on a free port (the embedded SmolLM2-135M-Instruct
by default), then for each concurrency level runs that many clients, each sending streaming
chat requests back to back (greedy, fixed answer length), and prints a table:
requests/s, completion tokens/s, and time to first token (median and p90) in ms, and the
16-client / 1-client throughput ratio.

The peer (`--peer`, on by default where llama-cpp-python is installed): the GGUF that `mmtune export`
writes for the same model, answered by llama.cpp through llama-cpp-python's `Llama` behind the same
OpenAI streaming route (one model, requests served one at a time under a lock, as
llama-cpp-python's own server does), with the same prompts and answer length. With llama-cpp-python's
server extra installed, `--peer-url URL` benchmarks a running `python -m llama_cpp.server` instead.

    python bench/serve.py [--model M] [--levels 1 4 16 32] [--requests-per-client 3] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastapi
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
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-concurrency", type=int, default=16, help="the server's --max-concurrency")
    p.add_argument("--url", help="benchmark a server already running at this URL instead of starting one")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip llama.cpp")
    p.add_argument("--peer-url", help="benchmark this running OpenAI server as the peer (e.g. llama_cpp.server)")
    args = p.parse_args()
    load = os.getloadavg()
    url, proc = args.url, None
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.model, port, args.max_concurrency)
    try:
        if proc:
            wait_ready(url, proc)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        rows = run_levels(url, model, args)
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    report(f"mmtune serve {model} (server --max-concurrency {args.max_concurrency})", rows, args)
    if args.peer and (args.peer_url or importlib.util.find_spec("llama_cpp")):
        if args.peer_url:
            peer_model = httpx.get(f"{args.peer_url}/v1/models").json()["data"][0]["id"]
            report(f"peer at {args.peer_url}", run_levels(args.peer_url, peer_model, args), args)
        else:
            with tempfile.TemporaryDirectory() as tmp, llama_cpp_peer(args.model, Path(tmp)) as peer:
                report("llama.cpp (llama-cpp-python, f16 GGUF from `mmtune export`)",
                       run_levels(peer, "gguf", args), args)
    print(f"\nload average before the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} CPUs); after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def run_levels(url: str, model: str, args) -> list[dict]:
    asyncio.run(level(url, model, 1, 1, 4))  # warm-up
    return [asyncio.run(level(url, model, c, args.requests_per_client, args.max_tokens)) for c in args.levels]


def report(title: str, rows: list[dict], args) -> None:
    print(f"\n{title}: {args.max_tokens} tokens per answer, greedy")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['req_per_s']:>7.2f} {r['tok_per_s']:>7.1f} "
            f"{r['ttft_p50_ms']:>12.0f} {r['ttft_p90_ms']:>12.0f}"
        )
    by = {r["clients"]: r for r in rows}
    if 1 in by and 16 in by:
        print(f"16 clients / 1 client: {by[16]['req_per_s'] / by[1]['req_per_s']:.2f}x requests/s")


@contextlib.contextmanager
def llama_cpp_peer(model: str, tmp: Path):
    """The model exported to GGUF by `mmtune export`, served by llama.cpp on a free port (in a thread)."""
    gguf = tmp / "model-f16.gguf"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "mmtune.cli", "export", model, "--out", str(gguf), "--no-verify"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(llama_cpp_app(gguf), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def llama_cpp_app(gguf: Path):
    """OpenAI's streaming chat route over one llama_cpp.Llama (its chat template from the GGUF)."""
    import threading

    from fastapi.responses import StreamingResponse
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    lock = threading.Lock()  # one generation at a time, as llama-cpp-python's server serves one Llama
    app = fastapi.FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "gguf", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request):
        body = await request.json()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def work():
            with lock:
                n = 0
                for chunk in llm.create_chat_completion(messages=body["messages"], max_tokens=body["max_tokens"],
                                                        temperature=0.0, stream=True):
                    delta = chunk["choices"][0]["delta"]
                    if delta.get("content"):
                        n += 1
                        loop.call_soon_threadsafe(queue.put_nowait, {"choices": [{"delta": delta}]})
                usage = {"completion_tokens": n}
                loop.call_soon_threadsafe(queue.put_nowait, {"choices": [], "usage": usage})
                loop.call_soon_threadsafe(queue.put_nowait, None)

        async def events():
            future = loop.run_in_executor(None, work)
            while (item := await queue.get()) is not None:
                yield f"data: {json.dumps(item)}\n\n"
            yield "data: [DONE]\n\n"
            await future

        return StreamingResponse(events(), media_type="text/event-stream")

    return app

if __name__ == "__main__":
    sys.exit(main())
