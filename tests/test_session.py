"""Session state rebuilt from the messages: calls, results, flags, metadata."""

from __future__ import annotations

import json
from typing import Any

from guardrail.request import parse_chat_request
from guardrail.session import session_from_request


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def request(**fields: Any):
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("a", "lookup", {"id": 1}),
                call("b", "fetch", {"url": "u"}),
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": '{"found": true}'},
        {"role": "tool", "tool_call_id": "b", "content": "page", "untrusted": True},
        {"role": "assistant", "content": None, "tool_calls": [call("c", "lookup", {})]},
        {"role": "tool", "tool_call_id": "c", "content": '{"error": "no such id"}'},
        {"role": "assistant", "content": None, "tool_calls": [call("d", "pay", {})]},
    ]
    tools = [
        {"type": "function", "function": {"name": name}}
        for name in ("lookup", "fetch", "pay")
    ]
    return parse_chat_request({"messages": messages, "tools": tools, **fields})


def test_calls_keep_order_step_and_result() -> None:
    session = session_from_request(request())

    assert [c.id for c in session.calls] == ["a", "b", "c", "d"]
    assert [c.step for c in session.calls] == [1, 1, 2, 3]
    assert session.step == 3
    assert session.calls[0].result_json() == {"found": True}
    assert session.tool_names == ("lookup", "fetch", "pay")


def test_result_flags() -> None:
    a, b, c, d = session_from_request(request()).calls

    assert (a.ok, a.error, a.pending, a.untrusted) == (True, False, False, False)
    assert (b.ok, b.untrusted) == (True, True)
    assert (c.ok, c.error) == (False, True)
    assert (d.ok, d.pending) == (False, True)


def test_is_error_field_marks_failure() -> None:
    body = request().model_dump()
    body["messages"][3]["is_error"] = True
    session = session_from_request(parse_chat_request(body))

    assert session.calls[0].error is True


def test_counts_per_tool() -> None:
    session = session_from_request(request())

    assert session.counts() == {"lookup": 2, "fetch": 1, "pay": 1}
    assert session.count("lookup") == 2


def test_metadata_user_and_domain() -> None:
    session = session_from_request(
        request(user="Ann@Example.COM", metadata={"tenant": "acme", "agent": "desk"})
    )

    assert session.user == "Ann@Example.COM"
    assert session.user_domain == "example.com"
    assert session.tenant == "acme"
    assert session.agent == "desk"


def test_headers_take_precedence() -> None:
    session = session_from_request(
        request(user="claimed@client.example", metadata={"tenant": "acme"}),
        headers={"X-Guardrail-User": "svc@corp.example", "X-Guardrail-Tenant": "t2"},
    )

    assert session.user == "svc@corp.example"
    assert session.tenant == "t2"
    assert session.headers["x-guardrail-user"] == "svc@corp.example"


def test_user_without_domain_has_empty_domain() -> None:
    assert session_from_request(request(user="ann")).user_domain == ""


def test_with_call_adds_a_pending_call() -> None:
    session = session_from_request(request())
    longer = session.with_call("pay", {"amount": 1})

    assert len(longer.calls) == len(session.calls) + 1
    assert longer.calls[-1].pending is True
    assert longer.calls[-1].step == 4
    assert longer.count("pay") == 2


def test_session_id_is_stable_across_steps() -> None:
    short = parse_chat_request(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hi"},
            ]
        }
    )

    assert session_from_request(short).id == session_from_request(request()).id
