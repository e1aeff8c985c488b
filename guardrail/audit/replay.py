"""Replay of logged requests under another policy, before its rollout.

Each ``request_completed`` event records the request's tools (name and
parameter schema), its ``tool_choice``, the calls of the history and the
calls the model made. From those, :func:`replay_request` rebuilds a request
whose session has the same calls in the same agent steps, evaluates the new
policy on it, and checks the logged calls against the new allowed actions.

The log contains no message text, so the rebuilt history has empty tool
results: conditions that read the text of a result, or of a message, see an
empty string. Such a condition can decide differently at replay than live.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardrail.policy.model import Policy

__all__ = ["ReplayOutcome", "ReplayReport", "replay_events", "replay_request"]

REPLAY_FIELDS = ("request_tools", "history", "agent_step")


@dataclass(frozen=True)
class ReplayOutcome:
    """One logged request under the new policy.

    ``blocked_calls`` are logged calls the new policy rejects, each with its
    reasons; ``unblocked_calls`` are logged calls that failed validation
    then and pass now.
    """

    request_id: str
    session_id: str
    timestamp: str
    logged_policy: str
    logged_allowed: tuple[str, ...]
    allowed: tuple[str, ...]
    blocked_calls: tuple[dict[str, Any], ...] = ()
    unblocked_calls: tuple[dict[str, Any], ...] = ()
    decisions: tuple[dict[str, Any], ...] = ()

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(name for name in self.allowed if name not in self.logged_allowed)

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(name for name in self.logged_allowed if name not in self.allowed)

    @property
    def changed(self) -> bool:
        return bool(
            self.added or self.removed or self.blocked_calls or self.unblocked_calls
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "session_id": self.session_id,
            "timestamp": self.timestamp,
            "logged_policy": self.logged_policy,
            "logged_allowed": list(self.logged_allowed),
            "allowed": list(self.allowed),
            "added": list(self.added),
            "removed": list(self.removed),
            "blocked_calls": list(self.blocked_calls),
            "unblocked_calls": list(self.unblocked_calls),
            "decisions": list(self.decisions),
        }


@dataclass
class ReplayReport:
    """The replay of a log; ``outcomes`` keeps only the requests that changed."""

    policy: str
    policy_sha256: str
    outcomes: list[ReplayOutcome] = field(default_factory=list)
    replayed: int = 0
    skipped: int = 0
    calls_now_blocked: int = 0
    calls_now_allowed: int = 0
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "policy_sha256": self.policy_sha256,
            "replayed": self.replayed,
            "skipped_without_replay_fields": self.skipped,
            "failed": self.failed,
            "changed": len(self.outcomes),
            "calls_now_blocked": self.calls_now_blocked,
            "calls_now_allowed": self.calls_now_allowed,
            "requests": [outcome.to_json() for outcome in self.outcomes],
        }


def rebuild_request(event: dict[str, Any]) -> Any:
    """Return the :class:`ChatRequest` a logged ``request_completed`` stands for.

    Raises :class:`~guardrail.errors.RequestError` when the logged fields do
    not form a valid request.
    """
    from guardrail.request import parse_chat_request

    metadata = dict(event.get("metadata") or {})
    metadata.setdefault("session_id", str(event.get("session_id", "")))
    messages: list[dict[str, Any]] = [{"role": "user", "content": ""}]
    history = [entry for entry in event.get("history") or [] if isinstance(entry, dict)]
    last_step = max(
        [int(event.get("agent_step") or 0)]
        + [int(entry.get("agent_step") or 0) for entry in history]
    )
    for step in range(1, last_step + 1):
        calls = [entry for entry in history if entry.get("agent_step") == step]
        assistant: dict[str, Any] = {"role": "assistant", "content": None}
        if calls:
            assistant["tool_calls"] = [
                {
                    "id": str(entry["id"]),
                    "type": "function",
                    "function": {
                        "name": str(entry["name"]),
                        "arguments": json.dumps(entry.get("arguments") or {}),
                    },
                }
                for entry in calls
            ]
        messages.append(assistant)
        for entry in calls:
            if "result_chars" in entry:
                messages.append(
                    {"role": "tool", "tool_call_id": str(entry["id"]), "content": ""}
                )
        messages.append({"role": "user", "content": ""})
    if len(messages) > 1:
        messages.pop()

    body: dict[str, Any] = {
        "messages": messages,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "parameters": tool.get("parameters") or {"type": "object"},
                },
            }
            for tool in event.get("request_tools") or []
        ],
        "parallel_tool_calls": bool(event.get("parallel_tool_calls", True)),
        "metadata": metadata,
    }
    if event.get("tool_choice") is not None:
        body["tool_choice"] = event["tool_choice"]
    return parse_chat_request(body)


def replay_request(policy: Policy, event: dict[str, Any]) -> ReplayOutcome:
    """Evaluate ``policy`` on one logged request and check its logged calls."""
    from guardrail.grammar.formats import ParsedCall, ParsedOutput
    from guardrail.policy.evaluate import evaluate_policy
    from guardrail.session import session_from_request
    from guardrail.validation import validate_output

    request = rebuild_request(event)
    session = session_from_request(request)
    actions = evaluate_policy(policy, request, session)

    blocked: list[dict[str, Any]] = []
    unblocked: list[dict[str, Any]] = []
    passed_then = bool(event.get("validation_passed", True))
    for call in event.get("calls") or []:
        parsed = ParsedCall(name=str(call["name"]), arguments=call.get("arguments"))
        result = validate_output(ParsedOutput(content="", calls=(parsed,)), actions)
        reasons = list(result.errors)
        check = getattr(policy, "check_call", None)
        if check is not None and not reasons:
            reasons.extend(check(parsed.name, parsed.arguments, session))
        entry = {"name": parsed.name, "arguments": parsed.arguments}
        if reasons:
            blocked.append({**entry, "reasons": reasons})
        elif not passed_then:
            unblocked.append(entry)

    return ReplayOutcome(
        request_id=str(event.get("request_id", "")),
        session_id=str(event.get("session_id", "")),
        timestamp=str(event.get("timestamp", "")),
        logged_policy=str(event.get("policy", "")),
        logged_allowed=tuple(str(name) for name in event.get("allowed_tools") or []),
        allowed=actions.tool_names,
        blocked_calls=tuple(blocked),
        unblocked_calls=tuple(unblocked),
        decisions=tuple(
            {"tool": d.tool, "allowed": d.allowed, "reason": d.reason}
            for d in actions.decisions
        ),
    )


def replay_events(policy: Policy, events: Iterable[dict[str, Any]]) -> ReplayReport:
    """Replay every ``request_completed`` in ``events`` under ``policy``.

    A request that cannot be rebuilt (a log written before the replay fields
    existed, or invalid logged data) is counted, never fatal.
    """
    from guardrail.errors import GuardrailError

    report = ReplayReport(policy=policy.name, policy_sha256=policy.sha256)
    for event in events:
        if event.get("event") != "request_completed":
            continue
        if "request_tools" not in event:
            report.skipped += 1
            continue
        try:
            outcome = replay_request(policy, event)
        except (GuardrailError, KeyError, TypeError, ValueError) as err:
            report.failed.append(f"{event.get('request_id')}: {err}")
            continue
        report.replayed += 1
        report.calls_now_blocked += len(outcome.blocked_calls)
        report.calls_now_allowed += len(outcome.unblocked_calls)
        if outcome.changed:
            report.outcomes.append(outcome)
    return report
