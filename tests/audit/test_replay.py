"""Replaying logged requests under another policy."""

from __future__ import annotations

import copy

import pytest
from baits import STRICT_SUPPORT_POLICY, SUPPORT_POLICY

from guardrail.audit.replay import rebuild_request, replay_events, replay_request
from guardrail.policy.loader import load_policy_text
from guardrail.session import session_from_request


def completed(events, request_id):
    return next(
        e
        for e in events
        if e["event"] == "request_completed" and e["request_id"] == request_id
    )


@pytest.mark.model
def test_rebuilt_request_keeps_session(generated_events):
    event = completed(generated_events, "req-3")

    session = session_from_request(rebuild_request(event))

    assert session.id == "s-refund"
    assert [call.name for call in session.calls] == ["search_orders"]
    assert session.calls[0].result == ""
    assert session.step == event["agent_step"]


@pytest.mark.model
def test_same_policy_changes_nothing(generated_events):
    policy = load_policy_text(SUPPORT_POLICY)
    support = [e for e in generated_events if e.get("policy") == "bait-support"]

    report = replay_events(policy, support)

    assert report.replayed == 4
    assert report.outcomes == []


@pytest.mark.model
def test_strict_policy_blocks_logged_calls(generated_events):
    policy = load_policy_text(STRICT_SUPPORT_POLICY)
    support = [e for e in generated_events if e.get("policy") == "bait-support"]

    report = replay_events(policy, support)
    outcomes = {outcome.request_id: outcome for outcome in report.outcomes}

    assert outcomes["req-2"].removed == ("search_orders",)
    assert outcomes["req-2"].blocked_calls[0]["name"] == "search_orders"
    refund = outcomes["req-3"].blocked_calls[0]
    assert refund["arguments"]["amount"] == 80
    assert any("50" in reason for reason in refund["reasons"])
    assert report.calls_now_blocked >= 2


@pytest.mark.model
def test_log_without_replay_fields_skipped(generated_events):
    old = copy.deepcopy(completed(generated_events, "req-3"))
    for key in ("request_tools", "history", "agent_step", "tool_choice"):
        old.pop(key)

    report = replay_events(load_policy_text(STRICT_SUPPORT_POLICY), [old])

    assert report.skipped == 1
    assert report.replayed == 0


@pytest.mark.model
def test_replay_request_decisions_name_rule(generated_events):
    outcome = replay_request(
        load_policy_text(STRICT_SUPPORT_POLICY), completed(generated_events, "req-0")
    )

    decisions = {d["tool"]: d for d in outcome.decisions}
    assert decisions["search_orders"]["allowed"] is False
    assert outcome.allowed == ("refund_order",)
