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


@pytest.mark.parametrize(
    "amount",
    [
        {"description": "no type"},
        {"type": ["number", "string"]},
        {"anyOf": [{"type": "number"}, {"type": "string"}]},
    ],
)
def test_numeric_constraint_pins_open_type(hf_tokenizer, amount):
    """`maximum` on an argument of open type must not let "5000" through."""
    from guardrail.guard import Guard

    request = request_with(
        {"type": "object", "properties": {"amount": amount}, "required": ["amount"]}
    )
    policy = load_policy_text(
        "policy: p\ntools:\n  t:\n    allow: true\n    arguments:\n"
        "      amount: {maximum: 100}\n",
        source="p.yaml",
    )
    guard = Guard(policy, hf_tokenizer)
    prepared = guard.prepare(request)
    tokenizer = guard.compiler.tokenizer

    for value, expected in [('"5000"', False), ("[5000]", False), ("50", True)]:
        sequence = guard.new_sequence(prepared, audit=None)
        text = f'<tool_call>{{"name": "t", "arguments": {{"amount": {value}}}}}'
        text += "</tool_call>"
        accepted = sequence.matcher.consume_tokens(tokenizer.tokenize_str(text))
        assert accepted is expected, value
        result = guard.finish(prepared, text, stopped=True, sequence=None, audit=None)
        assert result.validation.passed is expected, value


PYDANTIC_STYLE = {
    "type": "object",
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        }
    },
    "properties": {
        "home": {"$ref": "#/$defs/Address"},
        "work": {"$ref": "#/properties/home"},
    },
    "required": ["home", "work"],
}


def test_tool_schema_with_defs_compiles(hf_tokenizer):
    """Schemas from pydantic use $defs; nesting them must keep refs resolvable."""
    from guardrail.guard import Guard

    request = request_with(PYDANTIC_STYLE)
    guard = Guard(POLICY, hf_tokenizer)
    prepared = guard.prepare(request)
    tokenizer = guard.compiler.tokenizer

    good = '{"home": {"city": "Oslo"}, "work": {"city": "Bergen"}}'
    bad = '{"home": {"city": "Oslo"}, "work": {"town": "Bergen"}}'
    for arguments, expected in [(good, True), (bad, False)]:
        sequence = guard.new_sequence(prepared, audit=None)
        text = f'<tool_call>{{"name": "t", "arguments": {arguments}}}</tool_call>'
        accepted = sequence.matcher.consume_tokens(tokenizer.tokenize_str(text))
        assert accepted is expected, arguments
        result = guard.finish(prepared, text, stopped=True, sequence=None, audit=None)
        assert result.validation.passed is expected, arguments
