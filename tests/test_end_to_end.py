"""Guarded generation with the real SmolLM2-135M model on the CPU.

Greedy decoding in float32 on the CPU is deterministic, so the bait
conversations below produce the same tokens on every run; the assertions
check compliance and the audit, not exact text.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import jsonschema
import pytest

from guardrail.audit.log import AuditSink
from guardrail.policy.loader import load_policy
from guardrail.request import parse_chat_request

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parent.parent
BANKING = REPO / "policies" / "banking-assistant.yaml"
ALLOWED = {"get_balance", "transfer_funds"}


def run_example(backend, example, mode, max_tokens=96):
    body = json.loads((REPO / "examples" / f"{example}.json").read_text())
    request = parse_chat_request(body)
    guard = backend.guard(load_policy(BANKING))
    stream = io.StringIO()
    result = backend.generate(
        guard, request, sink=AuditSink(stream), mode=mode, max_tokens=max_tokens
    )
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return request, result, events


def summary_of(events):
    summaries = [e for e in events if e["event"] == "request_completed"]
    assert len(summaries) == 1
    return summaries[0]


def assert_compliant(request, result):
    assert result.message is not None, result.validation.errors
    assert result.validation.passed
    calls = result.message.get("tool_calls", [])
    assert calls, "required mode must produce a call"
    for call in calls:
        name = call["function"]["name"]
        assert name in ALLOWED
        arguments = json.loads(call["function"]["arguments"])
        jsonschema.validate(arguments, request.tool(name).function.parameters)
        if name == "transfer_funds":
            assert 0.01 <= arguments["amount"] <= 500


@pytest.mark.parametrize("example", ["close-account", "invented-tool"])
def test_enforce_bait_output_complies(backend, example):
    request, result, events = run_example(backend, example, "enforce")
    assert_compliant(request, result)
    assert summary_of(events)["validation_passed"] is True


def test_enforce_audit_shows_denied_tool_at_name_step(backend):
    _, _, events = run_example(backend, "close-account", "enforce")
    steps = [e for e in events if e["event"] == "decode_step"]
    denied = [
        token["probability"]
        for step in steps
        for token in step["top_blocked"]
        if token["text"].strip().lower().startswith("close")
    ]
    assert denied, "no step listed 'close' among the blocked candidates"
    assert max(denied) > 0.05


@pytest.mark.parametrize("example", ["close-account", "invented-tool"])
def test_shadow_bait_logs_blocked_mass(backend, example):
    _, result, events = run_example(backend, example, "shadow", max_tokens=24)
    summary = summary_of(events)
    assert summary["mode"] == "shadow"
    assert summary["blocked_mass_max"] > 0.5
    assert summary["policy_violated"] is True
    assert summary["violation_step"] == 0
    assert result.message is not None


def test_shadow_masks_nothing(backend):
    """Shadow output equals an unguarded greedy run of the same prompt."""
    import torch

    body = json.loads((REPO / "examples" / "close-account.json").read_text())
    request = parse_chat_request(body)
    guard = backend.guard(load_policy(BANKING))
    result = backend.generate(guard, request, sink=None, mode="shadow", max_tokens=16)

    prompt = guard.format.render_prompt(backend.tokenizer, request)
    encoded = backend.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        plain = backend.model.generate(**encoded, max_new_tokens=16, do_sample=False)
    expected = backend.tokenizer.decode(
        plain[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert result.text == expected


def test_auto_mode_injected_result_has_no_forbidden_call(backend):
    _, result, events = run_example(backend, "injected-result", "enforce")
    assert result.message is not None
    for call in result.message.get("tool_calls", []):
        assert call["function"]["name"] in ALLOWED
    assert summary_of(events)["tool_choice_mode"] == "auto"


def test_audit_events_carry_join_keys(backend):
    _, result, events = run_example(backend, "invented-tool", "enforce")
    digest = hashlib.sha256(BANKING.read_bytes()).hexdigest()
    for event in events:
        assert event["request_id"] == result.request_id
        assert event["policy"] == "banking-assistant"
        assert event["policy_sha256"] == digest
        assert event["engine"] == "transformers"
        assert event["session_id"].startswith("s-")
    steps = [e for e in events if e["event"] == "decode_step"]
    assert [e["step"] for e in steps] == list(range(len(steps)))
    assert summary_of(events)["steps"] == len(steps)
