"""The proxy in front of a real vLLM server on CPU, started per the recipe.

Starts ``python -m vllm.entrypoints.openai.api_server`` with guardrail's
logits processor and the default model on 127.0.0.1 (about 35 s on an idle
2-core machine, longer under load), then the proxy in upstream mode. Skipped
where vllm is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardrail.proxy.server import free_port

pytest.importorskip("vllm")
pytestmark = pytest.mark.model

PROCESSOR = "guardrail.processors.vllm:GuardrailLogitsProcessor"
START_TIMEOUT_S = 400


def vllm_environment(work: Path, audit_log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLLM_CACHE_ROOT=str(work / "vllm-cache"),
        VLLM_CONFIG_ROOT=str(work / "vllm-config"),
        VLLM_RPC_BASE_PATH=str(work / "rpc"),
        TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"),
        TMPDIR=str(work / "tmp"),
        VLLM_NO_USAGE_STATS="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        GUARDRAIL_AUDIT_LOG=str(audit_log),
    )
    for name in ("rpc", "tmp"):
        (work / name).mkdir(exist_ok=True)
    return env


@pytest.fixture(scope="module")
def vllm_server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("vllm")
    audit_log = work / "engine-audit.jsonl"
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "4096",
        "--logits-processors",
        PROCESSOR,
    ]
    log_file = (work / "vllm.log").open("w")
    process = subprocess.Popen(
        command,
        env=vllm_environment(work, audit_log),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                log_tail = (work / "vllm.log").read_text()[-3000:]
                pytest.fail(f"vLLM exited with {process.returncode}:\n{log_tail}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not ready in {START_TIMEOUT_S} s")
            time.sleep(2)
        yield {"url": url, "audit_log": audit_log}
    finally:
        # The server and its engine core run in one new process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log_file.close()


def test_proxy_over_real_vllm(vllm_server, start_proxy, refund_body, tmp_path):
    """Probe passes, the call is guarded, and the audit records join."""
    _runtime, proxy = start_proxy(vllm_server["url"], upstream_timeout_s=300)
    refund_body["max_tokens"] = 64
    refund_body["temperature"] = 0

    health = httpx.get(f"{proxy.url}/healthz").json()
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=refund_body,
        headers={"x-request-id": "req-vllm-1"},
        timeout=300,
    )

    assert health["engine"]["processor_loaded"] is True
    assert response.status_code == 200, response.text
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] in {"search_orders", "refund_order"}
    engine_events = [
        json.loads(line)
        for line in vllm_server["audit_log"].read_text().splitlines()
        if line.strip()
    ]
    completed = [
        e
        for e in engine_events
        if e["event"] == "request_completed" and e["request_id"] == "req-vllm-1"
    ]
    assert len(completed) == 1
    assert completed[0]["engine"] == "vllm"
    proxy_events = [
        json.loads(line)
        for line in (tmp_path / "audit.jsonl").read_text().splitlines()
        if '"proxy_request"' in line
    ]
    assert proxy_events[-1]["request_id"] == "req-vllm-1"
    assert proxy_events[-1]["session_id"] == completed[0]["session_id"]
