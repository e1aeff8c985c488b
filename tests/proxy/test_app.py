"""The proxy served by uvicorn on 127.0.0.1, against stand-in upstreams."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from guardrail.spec import GuardSpec

API_KEY = "sk-support-team"


def call_text(name: str, arguments: dict[str, Any]) -> str:
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def audit_events(path: Path, event: str) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if e["event"] == event]


def client_for(url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


def test_plain_and_stream_same_calls(standin, start_proxy, refund_body):
    """Streaming and plain responses carry the same calls for one output."""
    reply = call_text(
        "refund_order",
        {"order_id": "O-5521", "amount": 80, "reason": "arrived broken"},
    )
    _upstream, upstream_server = standin(reply=lambda body, spec: reply)
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    client = client_for(proxy.url)
    request = {k: v for k, v in refund_body.items() if k != "model"}

    plain = client.chat.completions.create(model="support-agent", **request)
    stream = client.chat.completions.create(
        model="support-agent", stream=True, **request
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )

    plain_calls = plain.choices[0].message.tool_calls or []
    assert [c.function.name for c in plain_calls] == ["refund_order"]
    assert list(names.values()) == ["refund_order"]
    assert json.loads(arguments[0]) == json.loads(plain_calls[0].function.arguments)
    assert json.loads(arguments[0])["amount"] == 80
    assert plain.choices[0].finish_reason == "tool_calls"
    assert finish == "tool_calls"


def test_spec_forwarded_in_vllm_xargs(standin, start_proxy, refund_body):
    """The upstream gets the rendered prompt and the policy's narrowed spec."""
    upstream, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")

    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=refund_body,
        headers={"x-request-id": "req-forwarded-1"},
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-forwarded-1"
    body = upstream.bodies[-1]
    spec = GuardSpec.model_validate_json(body["vllm_xargs"]["guardrail"])
    assert spec.request_id == "req-forwarded-1"
    assert spec.policy == "support-agent"
    assert spec.tool_choice == "required"
    assert {tool.name for tool in spec.tools} == {"search_orders", "refund_order"}
    refund = next(tool for tool in spec.tools if tool.name == "refund_order")
    assert refund.parameters["properties"]["amount"]["maximum"] == 100
    assert "<tool_call>" in body["prompt"]
    assert body["model"] == "stand-in-model"


def test_concurrent_requests_keep_sessions_apart(
    standin, start_proxy, refund_body, tmp_path
):
    """Interleaved requests of different conversations never mix their state."""

    def echo_customer(body: dict[str, Any], spec: GuardSpec | None) -> str:
        # The last customer id in the prompt is this conversation's own.
        customer = re.findall(r"C\d{6}", body["prompt"])[-1]
        return call_text("search_orders", {"customer_id": customer})

    upstream, upstream_server = standin(reply=echo_customer, delay_s=0.05)
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    customers = [f"C{100000 + index}" for index in range(8)]
    results: dict[str, dict[str, Any]] = {}

    def converse(customer: str) -> None:
        body = json.loads(json.dumps(refund_body))
        body["messages"][1]["content"] = f"I am customer {customer}. Find my orders."
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json=body,
            headers={"x-request-id": f"req-{customer}"},
            timeout=60,
        )
        results[customer] = {"status": response.status_code, "body": response.json()}

    threads = [threading.Thread(target=converse, args=(c,)) for c in customers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    sessions = set()
    for customer in customers:
        result = results[customer]
        assert result["status"] == 200
        call = result["body"]["choices"][0]["message"]["tool_calls"][0]
        assert json.loads(call["function"]["arguments"]) == {"customer_id": customer}
        event = next(
            e
            for e in audit_events(tmp_path / "audit.jsonl", "proxy_request")
            if e["request_id"] == f"req-{customer}"
        )
        sessions.add(event["session_id"])
    assert len(sessions) == len(customers)
    specs = [
        GuardSpec.model_validate_json(b["vllm_xargs"]["guardrail"])
        for b in upstream.bodies
        if b.get("prompt", "").find("Find my orders") >= 0
    ]
    assert len({spec.session_id for spec in specs}) == len(customers)


def test_unbound_request_rejected(standin, start_proxy, refund_body, tmp_path):
    """A request no binding selects gets 403 and never reaches the upstream."""
    upstream, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    probes = len(upstream.bodies)
    refund_body["model"] = "gpt-4o"

    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=refund_body,
        headers={"authorization": "Bearer sk-unknown"},
    )

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "unbound_request"
    assert "support-agent" in error["message"]
    assert len(upstream.bodies) == probes
    event = audit_events(tmp_path / "audit.jsonl", "proxy_request")[0]
    for key in ("request_id", "session_id", "policy", "policy_sha256", "mode"):
        assert key in event, key
    assert event["policy"] is None


def test_api_key_and_header_binding(standin, start_proxy, refund_body):
    """An API key binds its policy; a header naming another policy conflicts."""
    upstream, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    refund_body["model"] = "any-model"
    url = f"{proxy.url}/v1/chat/completions"

    by_key = httpx.post(
        url, json=refund_body, headers={"authorization": f"Bearer {API_KEY}"}
    )
    by_header = httpx.post(
        url, json=refund_body, headers={"x-guardrail-policy": "read-only"}
    )
    conflict = httpx.post(
        url,
        json=refund_body,
        headers={
            "authorization": f"Bearer {API_KEY}",
            "x-guardrail-policy": "read-only",
        },
    )
    unknown = httpx.post(url, json=refund_body, headers={"x-guardrail-policy": "admin"})

    assert by_key.status_code == 200
    assert by_header.status_code == 200
    spec = GuardSpec.model_validate_json(upstream.bodies[-1]["vllm_xargs"]["guardrail"])
    assert spec.policy == "read-only"
    assert [tool.name for tool in spec.tools] == ["search_orders"]
    assert conflict.status_code == 403
    assert conflict.json()["error"]["code"] == "conflicting_binding"
    assert unknown.status_code == 400
    assert "'admin'" in unknown.json()["error"]["message"]


def test_upstream_without_processor_refused(
    standin, start_proxy, refund_body, tmp_path
):
    """vLLM without the processor fails the start-up probe; nothing is served."""
    forbidden = call_text("delete_customer", {"customer_id": "C123456"})
    upstream, upstream_server = standin(
        processor=False, reply=lambda body, spec: forbidden
    )
    _runtime, proxy = start_proxy(f"{upstream_server.url}/v1")

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)
    health = httpx.get(f"{proxy.url}/healthz")

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_processor_missing"
    assert "delete_customer" not in response.text
    assert health.status_code == 503
    assert health.json()["engine"]["processor_loaded"] is False
    forwarded = [b for b in upstream.bodies if "Order O-5521" in b.get("prompt", "")]
    assert forwarded == []


def test_forbidden_call_from_upstream_caught(
    standin, start_proxy, refund_body, tmp_path
):
    """A forbidden call from an upstream that passed the probe is withheld.

    The stand-in answers the probe like a guarded server but then returns
    ``delete_customer``, which the policy forbids: what vLLM does when the
    processor is not applied to a request.
    """
    forbidden = call_text("delete_customer", {"customer_id": "C123456"})
    upstream, upstream_server = standin(reply=lambda body, spec: forbidden)
    _runtime, proxy = start_proxy(f"{upstream_server.url}/v1", probe_interval_s=300)
    url = f"{proxy.url}/v1/chat/completions"

    first = httpx.post(url, json=refund_body)
    upstream.reply = lambda body, spec: call_text(
        "search_orders", {"customer_id": "C123456"}
    )
    second = httpx.post(url, json=refund_body)
    metrics = httpx.get(f"{proxy.url}/metrics").text

    assert first.status_code == 502
    assert first.json()["error"]["code"] == "upstream_guard_violation"
    assert "delete_customer" in first.json()["error"]["message"]
    assert "tool_calls" not in first.text
    assert second.status_code == 502
    assert second.json()["error"]["code"] == "upstream_processor_missing"
    assert 'guardrail_proxy_blocked_calls_total{policy="support-agent"} 1.0' in metrics
    event = audit_events(tmp_path / "audit.jsonl", "proxy_request")[0]
    assert event["status"] == 502
    assert event["calls"] == ["delete_customer"]


def test_argument_beyond_policy_caught(standin, start_proxy, refund_body):
    """An allowed tool with an argument over the policy's bound is withheld."""
    over = call_text(
        "refund_order", {"order_id": "O-5521", "amount": 5000, "reason": "x"}
    )
    _upstream, upstream_server = standin(reply=lambda body, spec: over)
    _, proxy = start_proxy(f"{upstream_server.url}/v1")

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert response.status_code == 502
    assert "5000 is greater than the maximum of 100" in response.text


ARGS_CONDITION_POLICY = """\
policy: support-agent
tools:
  search_orders:
    allow: true
rules:
  - id: small-refunds-only
    effect: permit
    tools: [refund_order]
    when: "args.amount <= 50.0"
"""


def test_args_condition_checked_after_generation(
    standin, start_proxy, refund_body, policy_dir
):
    """A condition on args cannot be masked; the proxy checks it afterwards.

    The call passes the mask (refund_order is permitted), so the upstream is
    not blamed: the response is 422 and the next request is still served.
    """
    (policy_dir / "support-agent.yaml").write_text(ARGS_CONDITION_POLICY, "utf-8")
    refund = call_text(
        "refund_order", {"order_id": "O-5521", "amount": 80, "reason": "broken"}
    )
    upstream, upstream_server = standin(reply=lambda body, spec: refund)
    _, proxy = start_proxy(f"{upstream_server.url}/v1", probe_interval_s=300)
    url = f"{proxy.url}/v1/chat/completions"

    first = httpx.post(url, json=refund_body)
    upstream.reply = lambda body, spec: call_text(
        "search_orders", {"customer_id": "C123456"}
    )
    second = httpx.post(url, json=refund_body)

    assert first.status_code == 422
    assert first.json()["error"]["code"] == "policy_violation"
    assert "no rule permits refund_order" in first.json()["error"]["message"]
    assert "tool_calls" not in first.text
    assert second.status_code == 200
    assert second.json()["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize(
    ("content", "code", "fragment"),
    [
        (b"{not json", "invalid_json", "line 1 column 2"),
        (b"", "invalid_json", "empty request body"),
        (b"[1, 2]", "invalid_request", "got an array"),
        (b'{"messages": []}', "invalid_request", "$.messages"),
        (b"\xff\xfe{}", "invalid_encoding", "not valid UTF-8"),
        (b'{"messages": [{"role": "user", "content": NaN}]}', "invalid_json", "NaN"),
        (
            b'{"model": "support-agent", "messages": '
            b'[{"role": "user", "content": "\\ud800"}]}',
            "invalid_encoding",
            "$.messages[0].content",
        ),
        (
            b'{"model": "support-agent", "stream": "yes", '
            b'"messages": [{"role": "user", "content": "hi"}]}',
            "invalid_value",
            "$.stream",
        ),
        (
            b'{"model": "support-agent", "max_tokens": 0, '
            b'"messages": [{"role": "user", "content": "hi"}]}',
            "invalid_value",
            "$.max_tokens",
        ),
        (
            b'{"model": "support-agent", "n": 3, '
            b'"messages": [{"role": "user", "content": "hi"}]}',
            "unsupported_parameter",
            "n=1",
        ),
        (
            b'{"model": "support-agent", "messages": '
            b'[{"role": "wizard", "content": "hi"}]}',
            "invalid_request",
            "$.messages[0]",
        ),
    ],
)
def test_malformed_bodies_get_400(standin, start_proxy, content, code, fragment):
    """Each malformed body gets 400 with a code and a message naming the fix."""
    _, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")

    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert fragment in error["message"]


def test_oversized_body_gets_413(standin, start_proxy, refund_body):
    """A body over max_body_bytes is cut off with 413 before it is decoded."""
    _, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1", max_body_bytes=4096)
    refund_body["messages"][1]["content"] = "x" * 10_000

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]["message"]


def thousand_tools() -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{index:04d}",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "maxLength": 40}},
                    "required": ["query"],
                },
            },
        }
        for index in range(1000)
    ]


def test_thousand_tools_over_limit(standin, start_proxy):
    """1,000 tools exceed the default limit of 128 with a clear 400."""
    _, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    body = {
        "model": "support-agent",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": thousand_tools(),
    }

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_tools"
    assert error["param"] == "tools"
    assert "1000 tools exceed the proxy's limit of 128" in error["message"]


def test_thousand_tools_served_when_allowed(standin, start_proxy, policy_dir):
    """With max_tools raised, 1,000 tools are evaluated and forwarded."""
    (policy_dir / "open.yaml").write_text("policy: open\ndefault: allow\n")
    upstream, upstream_server = standin(
        reply=lambda body, spec: call_text("tool_0999", {"query": "lamps"})
    )
    _, proxy = start_proxy(f"{upstream_server.url}/v1", max_tools=1000, bindings=[])
    body = {
        "model": "open",
        "messages": [{"role": "user", "content": "find lamps"}],
        "tools": thousand_tools(),
    }

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=120)

    assert response.status_code == 200
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "tool_0999"
    spec = GuardSpec.model_validate_json(upstream.bodies[-1]["vllm_xargs"]["guardrail"])
    assert len(spec.tools) == 1000


def test_unicode_tool_name_gets_400(standin, start_proxy, refund_body):
    """A tool name outside the OpenAI name alphabet is rejected by JSON path."""
    _, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    refund_body["tools"][0]["function"]["name"] = "recherche_données"

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "$.tools[0].function.name"
    assert "recherche_données" in error["message"]
    assert "ASCII" in error["message"]


def test_unicode_arguments_round_trip(standin, start_proxy, refund_body):
    """Non-ASCII arguments in history and in the reply pass through intact."""
    reason = "colis arrivé cassé — 壊れた 📦"
    upstream, upstream_server = standin(
        reply=lambda body, spec: call_text(
            "refund_order", {"order_id": "O-5521", "amount": 80, "reason": reason}
        )
    )
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    refund_body["messages"][1]["content"] = "Bonjour, mon colis est arrivé cassé ☹"

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert response.status_code == 200
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"])["reason"] == reason
    assert "arrivé cassé ☹" in upstream.bodies[-1]["prompt"]


def test_upstream_down_then_back(standin, start_proxy, refund_body):
    """A down upstream gives 502; serving resumes once it is back."""
    from guardrail.proxy.server import free_port

    port = free_port()
    _, proxy = start_proxy(f"http://127.0.0.1:{port}/v1", upstream_timeout_s=5)
    url = f"{proxy.url}/v1/chat/completions"

    down = httpx.post(url, json=refund_body)
    health_down = httpx.get(f"{proxy.url}/healthz")
    standin(port=port)
    back = httpx.post(url, json=refund_body)
    health_back = httpx.get(f"{proxy.url}/healthz")

    assert down.status_code == 502
    assert down.json()["error"]["code"] == "upstream_unreachable"
    assert f"127.0.0.1:{port}" in down.json()["error"]["message"]
    assert health_down.status_code == 503
    assert back.status_code == 200
    assert health_back.status_code == 200


def test_upstream_error_message_forwarded(standin, start_proxy, refund_body):
    """An upstream HTTP error becomes 502 carrying the upstream's message."""
    _upstream, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")
    upstream_server.server.should_exit = True
    upstream_server.thread.join(10)

    # A plain FastAPI 404 from a server that is not an OpenAI API at all.
    from fastapi import FastAPI

    from guardrail.proxy.server import serve_app

    other = serve_app(FastAPI(), port=upstream_server.port)
    try:
        response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)
    finally:
        other.stop()

    assert response.status_code == 502
    assert "returned HTTP 404: Not Found" in response.json()["error"]["message"]


def test_healthz_models_and_metrics(standin, start_proxy, refund_body):
    """Health names policy versions and the processor; metrics count requests."""
    _, upstream_server = standin()
    runtime, proxy = start_proxy(f"{upstream_server.url}/v1")
    httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)
    refund_body["model"] = "nobody"
    httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    health = httpx.get(f"{proxy.url}/healthz").json()
    models = httpx.get(f"{proxy.url}/v1/models").json()
    metrics = httpx.get(f"{proxy.url}/metrics").text

    sha = runtime.policies.get("support-agent").sha256
    assert health["status"] == "ok"
    assert health["policies"]["support-agent"]["sha256"] == sha
    assert health["engine"]["processor_loaded"] is True
    assert health["audit"]["healthy"] is True
    assert [m["id"] for m in models["data"]] == ["read-only", "support-agent"]
    assert (
        'guardrail_proxy_requests_total{policy="support-agent",status="200"} 1.0'
        in metrics
    )
    assert 'guardrail_proxy_errors_total{code="unbound_request"} 1.0' in metrics


def test_audit_event_per_request(standin, start_proxy, refund_body, tmp_path):
    """Each request, served or rejected, writes one proxy_request event."""
    _, upstream_server = standin()
    runtime, proxy = start_proxy(f"{upstream_server.url}/v1")
    url = f"{proxy.url}/v1/chat/completions"
    httpx.post(url, json=refund_body, headers={"x-request-id": "req-ok"})
    httpx.post(url, content=b"{", headers={"x-request-id": "req-bad"})
    proxy.stop()

    events = audit_events(tmp_path / "audit.jsonl", "proxy_request")
    by_id = {event["request_id"]: event for event in events}
    assert len(events) == 2
    assert by_id["req-ok"]["status"] == 200
    assert by_id["req-ok"]["policy"] == "support-agent"
    assert by_id["req-ok"]["calls"] == ["search_orders"]
    assert by_id["req-ok"]["engine"] == "vllm"
    assert by_id["req-bad"]["status"] == 400
    assert by_id["req-bad"]["error_code"] == "invalid_json"
    assert runtime.sink.written == 2


def test_truncated_call_withheld(standin, start_proxy, refund_body):
    """A turn cut by the token limit returns no partial call."""
    _upstream, upstream_server = standin(
        reply=lambda body, spec: '<tool_call>\n{"name": "search_orders", "argu',
        finish_reason="length",
    )
    _, proxy = start_proxy(f"{upstream_server.url}/v1")

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"]


def test_chat_api_tool_calls_validated(standin, start_proxy, refund_body):
    """With upstream_api chat, the upstream's parsed tool_calls are checked."""
    tool_calls = [
        {
            "id": "chatcmpl-tool-1",
            "type": "function",
            "function": {
                "name": "delete_customer",
                "arguments": '{"customer_id": "C123456"}',
            },
        }
    ]
    upstream, upstream_server = standin(tool_calls=tool_calls)
    _, proxy = start_proxy(f"{upstream_server.url}/v1", upstream_api="chat")

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert response.status_code == 502
    assert "'delete_customer' is not allowed" in response.json()["error"]["message"]
    forwarded = upstream.bodies[-1]
    assert forwarded["tool_choice"] == "auto"
    assert "vllm_xargs" in forwarded


def test_unknown_path_openai_error(standin, start_proxy):
    """Unknown routes return the OpenAI error layout."""
    _, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1")

    response = httpx.get(f"{proxy.url}/v1/completions")

    assert response.status_code in {404, 405}
    assert "POST /v1/chat/completions" in response.json()["error"]["message"]


def test_policy_hot_reload_served(standin, start_proxy, refund_body, policy_dir):
    """An edited policy file is served after the next poll; metrics count it."""
    import time

    upstream, upstream_server = standin()
    _, proxy = start_proxy(f"{upstream_server.url}/v1", policy_reload_interval_s=0.2)
    path = policy_dir / "read-only.yaml"
    edited = path.read_text().replace(
        "  refund_order:\n    allow: false", "  refund_order:\n    allow: true"
    )
    path.write_text(edited)
    stat = path.stat()
    os.utime(path, (stat.st_atime + 5, stat.st_mtime + 5))

    deadline = time.monotonic() + 20
    metrics = ""
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{proxy.url}/metrics").text
        if 'guardrail_proxy_policy_reloads_total{result="applied"}' in metrics:
            break
        time.sleep(0.2)
    refund_body["model"] = "read-only"
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=refund_body)

    assert 'guardrail_proxy_policy_reloads_total{result="applied"} 1.0' in metrics
    assert response.status_code == 200
    spec = GuardSpec.model_validate_json(upstream.bodies[-1]["vllm_xargs"]["guardrail"])
    assert {tool.name for tool in spec.tools} == {"search_orders", "refund_order"}
