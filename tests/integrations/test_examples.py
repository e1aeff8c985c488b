"""The framework examples in integrations/, run against the real proxy.

The proxy runs in embedded mode with the real default model on CPU, started
once for the module on a free 127.0.0.1 port. Token limits are small because
the model generates about 13 tokens/s on a 2-core machine.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrail.proxy import ProxyConfig, build_runtime, create_app
from guardrail.proxy.server import ServerThread, serve_app

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {"search_orders", "refund_order"}

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def audit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy") / "audit.jsonl"


@pytest.fixture(scope="module")
def proxy(backend: Any, audit_path: Path) -> Iterator[ServerThread]:
    config = ProxyConfig(
        policy_dir=REPO / "policies",
        embedded=True,
        audit_log=audit_path,
        policy_reload_interval_s=0,
    )
    server = serve_app(create_app(build_runtime(config, backend=backend)))
    yield server
    server.stop()


def example(name: str) -> Any:
    folder = str(REPO / "integrations")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def proxy_events(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    return [event for event in events if event["event"] == "proxy_request"]


def check_allowed(call: dict[str, Any]) -> None:
    assert call["name"] in ALLOWED
    if call["name"] == "search_orders":
        assert call["arguments"]["customer_id"].startswith("C")
        assert len(call["arguments"]["customer_id"]) == 7
    else:
        assert call["arguments"]["amount"] <= 100


def test_openai_sdk_example(proxy, audit_path):
    """The OpenAI SDK gets the same guarded call plain and streamed."""
    result = example("openai_sdk").run(f"{proxy.url}/v1", max_tokens=64)

    assert result["finish_reason"] == "tool_calls"
    assert len(result["plain"]) == 1
    check_allowed(result["plain"][0])
    assert result["streamed"] == result["plain"]
    events = proxy_events(audit_path)
    assert events[-1]["status"] == 200
    assert events[-1]["stream"] is True
    assert events[-1]["engine"] == "transformers"


def test_langchain_agent_loop(proxy, audit_path):
    """LangChain runs a guarded call, feeds the result back, then stops."""
    before = len(proxy_events(audit_path))

    result = example("langchain_agent").run(
        f"{proxy.url}/v1", max_steps=2, max_tokens=64
    )

    assert len(result["calls"]) >= 1
    for call in result["calls"]:
        check_allowed(call)
    events = proxy_events(audit_path)[before:]
    assert len(events) == result["model_calls"]
    assert all(event["status"] == 200 for event in events)
    # Every step of one conversation carries the same session id.
    assert len({event["session_id"] for event in events}) == 1


def test_openai_agents_example(proxy, audit_path):
    """The OpenAI Agents SDK stops on its first, guarded tool call."""
    result = example("openai_agents").run(f"{proxy.url}/v1", max_tokens=64)

    assert len(result["calls"]) == 1
    check_allowed(result["calls"][0])
    assert result["final_output"]
    events = proxy_events(audit_path)
    assert events[-1]["status"] == 200
