"""Fixtures for proxy tests: real servers on 127.0.0.1, started per test.

The proxy runs with uvicorn in a thread on a free loopback port. Where a
test needs an upstream, :class:`StandInVLLM` plays a vLLM server on another
loopback port. Real vLLM on CPU takes about 35 s to start, and a stand-in
can also play the failure that matters here: a server without guardrail's
logits processor.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from guardrail.proxy import ProxyConfig, ProxyRuntime, build_runtime, create_app
from guardrail.proxy.server import ServerThread, serve_app
from guardrail.spec import GuardSpec, spec_from_extra_args

REPO = Path(__file__).resolve().parents[2]

READ_ONLY_POLICY = """\
policy: read-only
default: deny
tools:
  search_orders:
    allow: true
  refund_order:
    allow: false
  delete_customer:
    allow: false
"""

API_KEY = "sk-support-team"

Reply = Callable[[dict[str, Any], GuardSpec | None], str]


def search_call(customer_id: str = "C123456") -> str:
    arguments = {"customer_id": customer_id}
    payload = json.dumps({"name": "search_orders", "arguments": arguments})
    return f"<tool_call>\n{payload}\n</tool_call>"


class StandInVLLM:
    """A loopback stand-in for a vLLM server's completions endpoints.

    ``processor=True`` plays a server with guardrail's logits processor as
    far as the proxy can see: a spec that allows nothing gets empty text.
    ``processor=False`` plays vLLM without the processor: it ignores
    ``vllm_xargs`` and answers every request with ``reply``. ``bodies``
    records every request body received, in order.
    """

    def __init__(
        self,
        *,
        processor: bool = True,
        reply: Reply | None = None,
        delay_s: float = 0.0,
        finish_reason: str = "stop",
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        self.processor = processor
        self.reply = reply or (lambda body, spec: search_call())
        self.delay_s = delay_s
        self.finish_reason = finish_reason
        self.tool_calls = tool_calls
        self.bodies: list[dict[str, Any]] = []

    def text_for(self, body: dict[str, Any]) -> str:
        spec = spec_from_extra_args(body.get("vllm_xargs"))
        allows_nothing = (
            spec is not None and spec.tool_choice == "required" and not spec.tools
        )
        if self.processor and allows_nothing:
            return ""
        return self.reply(body, spec)

    def app(self) -> FastAPI:
        import asyncio

        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "stand-in-model"}]}

        @app.post("/v1/completions")
        async def completions(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.bodies.append(body)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            choice = {
                "index": 0,
                "text": self.text_for(body),
                "finish_reason": self.finish_reason,
            }
            return {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.bodies.append(body)
            text = self.text_for(body)
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if text and self.tool_calls is not None:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": self.tool_calls,
                }
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": self.finish_reason,
            }
            return {"id": "chat-1", "object": "chat.completion", "choices": [choice]}

        return app


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    shutil.copy(REPO / "policies" / "support-agent.yaml", folder)
    (folder / "read-only.yaml").write_text(READ_ONLY_POLICY, encoding="utf-8")
    return folder


@pytest.fixture
def refund_body() -> dict[str, Any]:
    """The example refund conversation as a request body (a fresh copy)."""
    data = json.loads((REPO / "examples" / "refund.json").read_text("utf-8"))
    data["model"] = "support-agent"
    return copy.deepcopy(data)


@pytest.fixture
def bindings() -> list[dict[str, Any]]:
    return [
        {"policy": "support-agent", "api_keys": [API_KEY], "models": ["support-agent"]},
        {
            "policy": "read-only",
            "header_values": ["read-only"],
            "models": ["read-only"],
        },
    ]


@pytest.fixture
def standin() -> Iterator[Callable[..., tuple[StandInVLLM, ServerThread]]]:
    """Start stand-in upstreams; each is stopped when the test ends."""
    started: list[ServerThread] = []

    def start(**options: Any) -> tuple[StandInVLLM, ServerThread]:
        port = options.pop("port", None)
        upstream = StandInVLLM(**options)
        server = serve_app(upstream.app(), port=port)
        started.append(server)
        return upstream, server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_proxy(
    tmp_path: Path,
    policy_dir: Path,
    bindings: list[dict[str, Any]],
    hf_tokenizer: Any,
) -> Iterator[Callable[..., tuple[ProxyRuntime, ServerThread]]]:
    """Start the real proxy in upstream mode against ``upstream``."""
    started: list[ServerThread] = []

    def start(upstream: str, **settings: Any) -> tuple[ProxyRuntime, ServerThread]:
        values: dict[str, Any] = {
            "policy_dir": policy_dir,
            "upstream": upstream,
            "bindings": bindings,
            "audit_log": tmp_path / "audit.jsonl",
            "policy_reload_interval_s": 0,
        }
        values.update(settings)
        config = ProxyConfig.model_validate(values)
        runtime = build_runtime(config, hf_tokenizer=hf_tokenizer)
        server = serve_app(create_app(runtime))
        started.append(server)
        return runtime, server

    yield start
    for server in started:
        server.stop()
