"""The guard spec's audit fields survive the trip through ``vllm_xargs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrail.audit.alerts import latest_untrusted_result
from guardrail.audit.attribution import ToolCatalog
from guardrail.errors import RequestError
from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.loader import load_policy
from guardrail.request import parse_chat_request
from guardrail.session import session_from_request
from guardrail.spec import SPEC_KEY, GuardSpec, spec_from_extra_args

REPO = Path(__file__).resolve().parent.parent


def spec_for(example: str) -> tuple[GuardSpec, object, object, object]:
    policy = load_policy(REPO / "policies" / "banking-assistant.yaml")
    request = parse_chat_request(
        json.loads((REPO / "examples" / f"{example}.json").read_text())
    )
    session = session_from_request(request)
    actions = evaluate_policy(policy, request, session)
    spec = GuardSpec.from_actions(
        actions,
        policy_object=policy,
        session=session,
        request_tools=[tool.function.name for tool in request.tools],
        request_id=f"spec-{example}",
        session_id=session.id,
        policy=policy.name,
        policy_sha256=policy.sha256,
        alert_threshold=0.5,
    )
    return spec, actions, policy, session


@pytest.mark.parametrize("example", ["close-account", "injected-result"])
def test_audit_fields_round_trip(example):
    spec, actions, policy, session = spec_for(example)

    xargs = spec.to_vllm_xargs()
    restored = spec_from_extra_args(xargs)

    assert restored == spec
    assert restored.actions() == actions
    assert restored.request_tools == ["get_balance", "transfer_funds", "close_account"]
    denied = [d for d in restored.decisions if not d.allowed]
    assert [(d.tool, d.rule, d.line) for d in denied] == [
        ("close_account", "tools.close_account", 15)
    ]
    assert restored.untrusted_result == latest_untrusted_result(policy, session)
    # The spec carries no message text: the prompt and whole tool results
    # stay out, only the untrusted result's excerpt travels.
    assert "Close my account" not in xargs[SPEC_KEY]


def test_untrusted_result_is_an_excerpt():
    spec, _, _, _ = spec_for("injected-result")

    result = spec.untrusted_result
    assert result is not None
    assert result["tool"] == "get_balance"
    assert set(result) == {
        "tool",
        "call_id",
        "agent_step",
        "marked",
        "chars",
        "sha256",
        "excerpt",
    }
    assert len(result["excerpt"]) <= result["chars"]


def test_catalog_from_spec_matches_actions():
    spec, actions, policy, _ = spec_for("close-account")
    restored = spec_from_extra_args(spec.to_vllm_xargs())

    from_spec = ToolCatalog.from_decisions(
        {tool.name: tool.parameters for tool in restored.tools},
        restored.decisions,
        mode=restored.tool_choice,
        policy_arguments=restored.policy_arguments,
        request_tools=restored.request_tools,
    )
    from_actions = ToolCatalog.from_actions(actions, policy)

    assert from_spec.allowed == from_actions.allowed
    assert from_spec.denied == from_actions.denied
    rule, reason = from_spec.denied["close_account"]
    assert rule.startswith("tools.close_account (")
    assert rule.endswith("banking-assistant.yaml:15)")
    assert reason == "forbidden"
    for tool, arguments in from_actions.policy_arguments.items():
        assert from_spec.policy_arguments.get(tool, {}) == arguments


def test_catalog_denies_request_tools_without_decision():
    catalog = ToolCatalog.from_decisions(
        {"get_balance": {"type": "object"}},
        [],
        mode="auto",
        request_tools=["get_balance", "close_account"],
    )

    assert catalog.denied == {"close_account": (None, "not allowed at this step")}


def test_spec_without_audit_fields_still_parses():
    """A spec written before the audit fields existed is read unchanged."""
    raw = {
        "request_id": "old",
        "policy": "p",
        "policy_sha256": "0" * 64,
        "tool_choice": "auto",
        "tools": [{"name": "t", "parameters": {"type": "object"}}],
    }

    spec = spec_from_extra_args({SPEC_KEY: json.dumps(raw)})

    assert spec.decisions == []
    assert spec.request_tools == []
    assert spec.policy_arguments == {}
    assert spec.untrusted_result is None


def test_invalid_decision_is_a_request_error():
    raw = {
        "request_id": "bad",
        "policy": "p",
        "policy_sha256": "0" * 64,
        "tool_choice": "auto",
        "decisions": [{"tool": "t", "allowed": "perhaps", "reason": "x"}],
    }

    with pytest.raises(RequestError, match=r"decisions\.0\.allowed"):
        spec_from_extra_args({SPEC_KEY: json.dumps(raw)})


def test_policy_alert_threshold_wins():
    policy = load_policy(REPO / "policies" / "banking-assistant.yaml")
    strict = policy.model_copy(update={"alert_threshold": 0.2})
    request = parse_chat_request(
        json.loads((REPO / "examples" / "close-account.json").read_text())
    )
    session = session_from_request(request)
    actions = evaluate_policy(policy, request, session)

    spec = GuardSpec.from_actions(
        actions,
        policy_object=strict,
        request_id="strict",
        policy=policy.name,
        policy_sha256=policy.sha256,
        alert_threshold=0.5,
    )

    assert spec.alert_threshold == 0.2
