"""Measure the latency the proxy adds and its requests/s, on loopback.

Three processes: a fast stand-in upstream (answers at once with a fixed
valid call, and answers the processor probe as a guarded vLLM would), the
proxy (`guardrail serve` in upstream mode), and this client. The added
latency is the proxy's p50/p99 minus the stand-in's, each measured with the
same sequential requests. Throughput is measured with concurrent clients.

    .venv/bin/python benchmarks/bench_proxy.py --requests 300 --concurrency 8

The loops are bounded by --requests; every server started here listens on
127.0.0.1 and is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

REPO = Path(__file__).resolve().parent.parent
CALL = (
    '<tool_call>\n{"name": "search_orders", "arguments": '
    '{"customer_id": "C123456"}}\n</tool_call>'
)


def standin_app() -> Any:
    """Return the stand-in upstream: a loopback stand-in for vLLM, no model."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "stand-in"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        spec = json.loads(body.get("vllm_xargs", {}).get("guardrail", "{}"))
        probe = spec.get("tool_choice") == "required" and not spec.get("tools")
        choice = {"index": 0, "text": "" if probe else CALL, "finish_reason": "stop"}
        return {"id": "cmpl", "object": "text_completion", "choices": [choice]}

    return app


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def free_port() -> int:
    from guardrail.proxy.server import free_port as pick

    return pick()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


def sequential(url: str, body: dict[str, Any], count: int) -> list[float]:
    """Return per-request latency in ms for ``count`` requests, one at a time."""
    latencies = []
    with httpx.Client(timeout=30) as client:
        for _ in range(5):  # warm-up: grammar cache, connections
            client.post(url, json=body).raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(url, json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return latencies


async def concurrent(url: str, body: dict[str, Any], count: int, workers: int) -> float:
    """Return requests/s for ``count`` requests spread over ``workers``."""
    remaining = count

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.post(url, json=body)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=workers)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(workers)))
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--standin-port", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.standin_port:
        import uvicorn

        uvicorn.run(
            standin_app(),
            host="127.0.0.1",
            port=options.standin_port,
            log_level="error",
        )
        return

    request = json.loads((REPO / "examples" / "refund.json").read_text("utf-8"))
    request["model"] = "support-agent"
    upstream_port, proxy_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    proxy = f"http://127.0.0.1:{proxy_port}"

    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as work:
        try:
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--standin-port", str(upstream_port)]
                )
            )
            wait_ready(f"{upstream}/models", processes[-1], 30)
            processes.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "guardrail"),
                        "serve",
                        "--policy-dir",
                        str(REPO / "policies"),
                        "--upstream",
                        upstream,
                        "--port",
                        str(proxy_port),
                        "--audit-log",
                        str(Path(work) / "audit.jsonl"),
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_ready(f"{proxy}/healthz", processes[-1], 120)

            # The baseline sends the stand-in the body the proxy would send.
            direct_body = {"model": "stand-in", "prompt": "x" * 2000, "max_tokens": 64}
            direct = sequential(
                f"{upstream}/completions", direct_body, options.requests
            )
            through = sequential(
                f"{proxy}/v1/chat/completions", request, options.requests
            )
            rate = asyncio.run(
                concurrent(
                    f"{proxy}/v1/chat/completions",
                    request,
                    options.requests,
                    options.concurrency,
                )
            )
        finally:
            for process in reversed(processes):
                os.kill(process.pid, signal.SIGTERM)
                process.wait(30)

    result = {
        "requests": options.requests,
        "upstream_p50_ms": round(statistics.median(direct), 2),
        "upstream_p99_ms": round(percentile(direct, 0.99), 2),
        "proxy_p50_ms": round(statistics.median(through), 2),
        "proxy_p99_ms": round(percentile(through, 0.99), 2),
        "added_p50_ms": round(
            statistics.median(through) - statistics.median(direct), 2
        ),
        "added_p99_ms": round(percentile(through, 0.99) - percentile(direct, 0.99), 2),
        "concurrency": options.concurrency,
        "requests_per_s": round(rate, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
