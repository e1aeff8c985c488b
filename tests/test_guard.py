"""The guard pipeline around generation: failures must not lose records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from guardrail.audit.log import AuditSink
from guardrail.errors import AuditError
from guardrail.policy.loader import load_policy
from guardrail.request import parse_chat_request

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.model


class FailingStream(io.StringIO):
    """A stand-in for a full disk: every write raises OSError."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def load_example():
    body = json.loads((REPO / "examples" / "refund.json").read_text())
    return parse_chat_request(body)


def test_failing_audit_sink_stops_generation(backend):
    guard = backend.guard(load_policy(REPO / "policies" / "support-agent.yaml"))
    sink = AuditSink(FailingStream())

    with pytest.raises(AuditError, match="No space left on device"):
        backend.generate(guard, load_example(), sink=sink, max_tokens=8)

    assert not sink.healthy
    assert sink.written == 0


def test_token_limit_withholds_partial_call(backend):
    guard = backend.guard(load_policy(REPO / "policies" / "support-agent.yaml"))
    stream = io.StringIO()

    result = backend.generate(
        guard, load_example(), sink=AuditSink(stream), max_tokens=6
    )

    assert result.finish_reason == "length"
    assert result.calls_withheld == 1
    assert result.message == {"role": "assistant", "content": None}
    summary = json.loads(stream.getvalue().splitlines()[-1])
    assert summary["truncated"] is True
    assert summary["calls_withheld"] == 1
    assert summary["policy_violated"] is False
    assert summary["output_returned"] is True


def test_token_limit_keeps_plain_text(backend):
    """A text reply cut off by the limit is returned, as OpenAI does."""
    body = json.loads((REPO / "examples" / "refund.json").read_text())
    body["tool_choice"] = "none"
    guard = backend.guard(load_policy(REPO / "policies" / "support-agent.yaml"))

    result = backend.generate(guard, parse_chat_request(body), sink=None, max_tokens=5)

    assert result.finish_reason == "length"
    assert result.calls_withheld == 0
    assert result.message["content"]
    assert result.validation.passed


def test_request_may_carry_subset_of_policy_tools(hf_tokenizer):
    """Serving tolerates a policy tool the request lacks, unless it looks misspelt."""
    from guardrail.errors import PolicyError
    from guardrail.guard import Guard
    from guardrail.policy.loader import load_policy_text

    body = json.loads((REPO / "examples" / "refund.json").read_text())
    body["tools"] = [
        t for t in body["tools"] if t["function"]["name"] != "delete_customer"
    ]
    request = parse_chat_request(body)
    policy = load_policy(REPO / "policies" / "support-agent.yaml")

    prepared = Guard(policy, hf_tokenizer).prepare(request)
    assert "delete_customer" not in prepared.actions.tool_names

    typo = load_policy_text(
        "policy: x\ntools:\n  refund_ordr:\n    allow: true\n", source="typo.yaml"
    )
    with pytest.raises(PolicyError, match="Did you mean 'refund_order'"):
        Guard(typo, hf_tokenizer).prepare(request)
