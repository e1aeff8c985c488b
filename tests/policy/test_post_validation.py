"""The policy's post-generation check, as the guard runs it, and the
grammars the example policies produce, compiled by llguidance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrail.grammar.formats import ParsedCall, ParsedOutput
from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.loader import load_policy, load_policy_text
from guardrail.request import parse_chat_request
from guardrail.session import session_from_request
from guardrail.validation import validate_output

REPO = Path(__file__).resolve().parents[2]

POLICY = """
policy: t
tools:
  refund: {allow: true}
rules:
  - {id: cap, effect: forbid, tools: [refund], when: 'args.amount > 50.0'}
budgets:
  - {id: one, tools: [refund], max: 1}
"""


def test_validate_output_runs_the_policy_check(make_request) -> None:
    policy = load_policy_text(POLICY)
    request = make_request({"refund": {"amount": {"type": "number"}}})
    session = session_from_request(request)
    actions = evaluate_policy(policy, request, session)
    output = ParsedOutput(content="", calls=(ParsedCall("refund", {"amount": 80.0}),))

    without = validate_output(output, actions)
    checked = validate_output(output, actions, policy=policy, session=session)

    assert without.passed is True
    assert checked.passed is False
    assert checked.errors[0].startswith("calls[0] refund: forbidden because")


def test_validate_output_counts_calls_of_one_turn(make_request) -> None:
    policy = load_policy_text(POLICY)
    request = make_request(
        {"refund": {"amount": {"type": "number"}}}, parallel_tool_calls=True
    )
    session = session_from_request(request)
    actions = evaluate_policy(policy, request, session)
    call = ParsedCall("refund", {"amount": 5.0})
    output = ParsedOutput(content="", calls=(call, call))

    result = validate_output(output, actions, policy=policy, session=session)

    assert any(e.startswith("calls[1] refund: budget one") for e in result.errors)
    assert not any(e.startswith("calls[0] refund: budget") for e in result.errors)


EXAMPLES = {
    "customer-support": "customer-support.json",
    "coding-agent": "coding-agent.json",
    "email-assistant": "email-assistant.json",
    "data-analyst": "data-analyst.json",
}


@pytest.mark.model
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_grammar_compiles(hf_tokenizer, name: str) -> None:
    """Allow-list patterns, phase enums and unions are grammars llguidance accepts."""
    from guardrail.grammar.compiler import GrammarCompiler, check_tool_schemas
    from guardrail.grammar.formats import get_format

    policy = load_policy(REPO / "policies" / f"{name}.yaml")
    body = json.loads((REPO / "examples" / EXAMPLES[name]).read_text())
    request = parse_chat_request(body)
    actions = evaluate_policy(policy, request, session_from_request(request))
    compiler = GrammarCompiler(hf_tokenizer, get_format("hermes"))

    check_tool_schemas(request, actions, policy)
    grammar = compiler.compile(actions, policy.sha256)

    assert compiler.new_matcher(grammar).is_error() is False
