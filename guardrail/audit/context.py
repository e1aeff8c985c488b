"""Build the audit of one request from what the guard pipeline prepared.

:func:`open_request_audit` wires a :class:`RequestAudit` with the step
attribution, the alert monitor and the fields ``request_completed`` needs
for replay. :func:`replay_fields` records the tool definitions, the
``tool_choice`` and the calls of the history, which is enough to evaluate
another policy on the same step later, and leaves message text out: tool
results appear only as their length and sha256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from guardrail.audit.alerts import (
    DEFAULT_ALERT_THRESHOLD,
    AlertMonitor,
    latest_untrusted_result,
    policy_alert_threshold,
)
from guardrail.audit.attribution import StepAttributor, ToolCatalog
from guardrail.audit.log import AuditSink, RequestAudit

if TYPE_CHECKING:
    from guardrail.guard import PreparedRequest
    from guardrail.policy.model import Policy
    from guardrail.request import ChatRequest
    from guardrail.session import Session

__all__ = ["open_request_audit", "replay_fields"]


def open_request_audit(
    sink: AuditSink,
    prepared: PreparedRequest,
    policy: Policy,
    *,
    engine: str,
    decode_bytes: Callable[[list[int]], bytes] | None,
    alert_threshold: float = DEFAULT_ALERT_THRESHOLD,
) -> RequestAudit:
    """Return the audit of ``prepared``, with attribution and alerts.

    The policy's own ``alert_threshold``, when it sets one, wins over
    ``alert_threshold``. Without ``decode_bytes`` no step is attributed and
    no alert can be raised.
    """
    threshold = policy_alert_threshold(policy, alert_threshold)
    attributor = None
    monitor = None
    if decode_bytes is not None:
        catalog = ToolCatalog.from_actions(prepared.actions, policy)
        attributor = StepAttributor(catalog, decode_bytes)
        monitor = AlertMonitor(
            threshold, latest_untrusted_result(policy, prepared.session)
        )
    return RequestAudit(
        sink=sink,
        request_id=prepared.request_id,
        session_id=prepared.session.id,
        policy=policy.name,
        policy_sha256=policy.sha256,
        mode=prepared.mode,
        engine=engine,
        alert_threshold=threshold,
        attributor=attributor,
        alerts=monitor,
        extra=replay_fields(prepared.request, prepared.session),
    )


def replay_fields(request: ChatRequest, session: Session) -> dict[str, Any]:
    """Return what a later policy evaluation of this step needs.

    ``request_tools`` keeps each tool's name and parameter schema (not its
    description), ``history`` each earlier call with its arguments and the
    length and digest of its result, and ``agent_step`` the number of
    assistant turns so far.
    """
    choice = request.tool_choice
    metadata = getattr(request, "metadata", None)
    fields: dict[str, Any] = {
        "request_tools": [
            {
                "name": tool.function.name,
                "parameters": tool.function.parameters or {"type": "object"},
            }
            for tool in request.tools
        ],
        "tool_choice": choice.model_dump() if hasattr(choice, "model_dump") else choice,
        "parallel_tool_calls": request.parallel_tool_calls,
        "agent_step": session.step,
        "history": [_history_entry(call) for call in session.calls],
    }
    if isinstance(metadata, dict):
        fields["metadata"] = metadata
    return fields


def _history_entry(call: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "agent_step": call.step,
    }
    if call.result is not None:
        entry["result_chars"] = len(call.result)
        entry["result_sha256"] = hashlib.sha256(call.result.encode()).hexdigest()
    return entry
