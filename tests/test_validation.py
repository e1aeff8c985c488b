"""Post-validation catches what the mask should have blocked, on its own."""

from __future__ import annotations

import pytest

from guardrail.grammar.hermes import HermesFormat
from guardrail.policy.evaluate import AllowedActions, AllowedTool
from guardrail.validation import validate_output


def actions_with(properties):
    tool = AllowedTool(
        name="t",
        parameters={
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        },
    )
    return AllowedActions(mode="required", tools=(tool,))


def check(arguments_json, properties):
    text = f'<tool_call>{{"name": "t", "arguments": {arguments_json}}}</tool_call>'
    output = HermesFormat().parse_output(text)
    return validate_output(output, actions_with(properties))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_rejected(value):
    result = check(
        f'{{"amount": {value}}}', {"amount": {"type": "number", "maximum": 100}}
    )
    assert not result.passed
    assert "not valid JSON" in result.errors[0]


def test_pattern_end_anchor_rejects_trailing_newline():
    result = check(
        '{"id": "O-5521\\n"}', {"id": {"type": "string", "pattern": "^O-[0-9]{4}$"}}
    )
    assert not result.passed


def test_pattern_digit_class_is_ascii():
    result = check(
        '{"id": "O-\u0663\u0663\u0663\u0663"}',
        {"id": {"type": "string", "pattern": "^O-\\\\d{4}$"}},
    )
    assert not result.passed


def test_pattern_dollar_in_class_is_literal():
    result = check('{"p": "5$"}', {"p": {"type": "string", "pattern": "^[0-9$]+$"}})
    assert result.passed


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("email", "a@example.com", "not an email"),
        ("hostname", "api.example.com", "-bad_host-"),
        ("ipv4", "10.0.0.1", "10.0.0"),
        ("date-time", "2026-12-04T10:00:00Z", "yesterday"),
        ("uuid", "12345678-1234-1234-1234-123456789012", "x"),
        ("uri", "https://example.com/a", "not a uri"),
    ],
)
def test_formats_are_checked(fmt, good, bad):
    properties = {"v": {"type": "string", "format": fmt}}
    assert check(f'{{"v": "{good}"}}', properties).passed
    assert not check(f'{{"v": "{bad}"}}', properties).passed


def test_unrunnable_pattern_fails_closed():
    result = check('{"v": "a"}', {"v": {"type": "string", "pattern": "\\\\p{L}"}})
    assert not result.passed
