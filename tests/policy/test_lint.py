"""Lint against tool schemas, and the warnings of ``policy check``."""

from __future__ import annotations

import pytest
from chat_requests import build_request

from guardrail.errors import PolicyError
from guardrail.policy.lint import lint_policy, raise_for_lint, review_policy
from guardrail.policy.loader import load_policy_text

TOOLS = build_request(
    {
        "send_email": {
            "to": {"type": "array", "items": {"type": "string"}},
            "subject": {"type": "string"},
        },
        "refund_order": {
            "amount": {"type": "number"},
            "currency": {"type": "string", "enum": ["EUR", "USD"]},
        },
        "fetch_url": {"url": {"type": "string"}},
    }
).tools


def lint(text: str) -> list[PolicyError]:
    return lint_policy(load_policy_text("policy: t\n" + text, source="p.yaml"), TOOLS)


def messages(text: str) -> list[str]:
    policy = load_policy_text("policy: t\n" + text, source="p.yaml")
    return [f"{f.severity}: {f.message}" for f in review_policy(policy, TOOLS)]


def test_unknown_tool_suggests_a_name() -> None:
    problems = lint("tools: {send_emial: {allow: true}}")

    assert len(problems) == 1
    assert "Did you mean 'send_email'" in problems[0].message
    assert problems[0].line == 2


def test_unknown_tool_in_rule_is_reported() -> None:
    problems = lint("rules:\n  - {id: r, effect: forbid, tools: [refund]}")

    assert "Did you mean 'refund_order'" in problems[0].message


def test_patterns_and_groups_may_match_nothing() -> None:
    assert lint("rules:\n  - {id: r, effect: forbid, tools: ['delete_*']}") == []


def test_unknown_argument_suggests_a_name() -> None:
    problems = lint(
        "rules:\n  - id: r\n    effect: permit\n    tools: ['*_order']\n"
        "    arguments: {ammount: {maximum: 5}}"
    )

    assert "Did you mean 'amount'" in problems[0].message
    assert problems[0].line == 6


def test_constraint_must_fit_the_type() -> None:
    problems = lint(
        "tools: {refund_order: {allow: true, arguments: {amount: {maxLength: 3}}}}"
    )

    assert "not supported for an argument of type number" in problems[0].message


def test_enum_without_common_value_is_reported() -> None:
    problems = lint(
        "tools: {refund_order: {allow: true, arguments: {currency: {enum: [GBP]}}}}"
    )

    assert "not valid for the tool's own schema" in problems[0].message


def test_allow_list_needs_a_string_argument() -> None:
    problems = lint(
        "tools:\n  refund_order:\n    allow: true\n    allow_lists:\n"
        "      amount: {urls: ['https://example.com']}"
    )

    assert "allow-lists apply to text values" in problems[0].message


def test_allow_list_on_string_array_is_fine() -> None:
    assert (
        lint(
            "tools:\n  send_email:\n    allow: true\n    allow_lists:\n"
            "      to: {email_domains: [example.com]}"
        )
        == []
    )


def test_phase_arguments_must_exist() -> None:
    problems = lint(
        "phases:\n  - id: p\n    tools: [refund_order]\n    after: fetch_url\n"
        "    same_arguments: {order: url}"
    )

    assert "has no argument 'order'" in problems[0].message


def test_raise_for_lint_raises_the_first() -> None:
    policy = load_policy_text("policy: t\ntools: {nope: {allow: true}}")

    with pytest.raises(PolicyError, match="unknown tool 'nope'"):
        raise_for_lint(policy, TOOLS)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "rules:\n  - {id: r, effect: permit, tools: [fetch_url], when: '1 > 2'}",
            "warning: rule r never fires: its condition is always false",
        ),
        (
            "rules:\n  - {id: r, effect: permit, tools: [fetch_url], when: 'true'}",
            "warning: rule r: its condition is always true",
        ),
        (
            "rules:\n  - {id: r, effect: permit, tools: [fetch_url], "
            "when: '1 / 0 == 1'}",
            "warning: rule r: its condition always fails",
        ),
        (
            "rules:\n  - {id: r, effect: permit, tools: [fetch_url]}\n"
            "  - {id: f, effect: forbid, tools: ['fetch_*']}",
            "warning: permit r never takes effect: forbid rule f",
        ),
        (
            "rules:\n  - {id: r, effect: permit, tools: [fetch_url], "
            "allow_tainted: true}",
            "warning: rule r: allow_tainted has no effect",
        ),
        (
            "rules:\n  - {id: r, effect: forbid, tools: ['drop_*']}",
            "note: rule r never fires: it selects no tool of the request",
        ),
        (
            "rules:\n  - {id: r, effect: forbid, tools: [fetch_url], "
            "when: 'args.url == \"x\"'}",
            "note: rule r: the condition reads args",
        ),
        (
            "budgets:\n  - {id: b, tools: [fetch_url], max: 0}",
            "warning: budget b has max 0",
        ),
    ],
)
def test_review_reports(body: str, expected: str) -> None:
    assert any(message.startswith(expected) for message in messages(body))


def test_review_of_a_clean_policy_is_empty() -> None:
    assert messages("tools: {fetch_url: {allow: true}}") == []
