"""Schema checks before compiling: whose fault an unenforceable schema is."""

from __future__ import annotations

import pytest

from guardrail.errors import RequestError
from guardrail.grammar.compiler import check_tool_schemas
from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.loader import load_policy_text
from guardrail.request import parse_chat_request
from guardrail.session import session_from_request

POLICY = load_policy_text("policy: p\ndefault: allow\n", source="p.yaml")


def request_with(parameters):
    return parse_chat_request(
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "t", "parameters": parameters},
                }
            ],
        }
    )


@pytest.mark.parametrize("attempt", [1, 2])
def test_unsupported_request_keyword_names_tool_path(attempt):
    """The second attempt hits the cache and must fail the same way."""
    request = request_with(
        {
            "type": "object",
            "properties": {"tags": {"type": "array", "uniqueItems": True}},
        }
    )
    actions = evaluate_policy(POLICY, request, session_from_request(request))
    with pytest.raises(RequestError, match=r"^\$\.tools\[0\]\.function\.parameters"):
        check_tool_schemas(request, actions, POLICY)


def test_supported_request_schema_passes():
    request = request_with(
        {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
    )
    actions = evaluate_policy(POLICY, request, session_from_request(request))
    check_tool_schemas(request, actions, POLICY)
