"""``blocked_mass_alert``: the model reached hard for a tool it may not call.

An alert is raised when one step puts more than the policy's alert
threshold on a denied tool, or on invented tool names taken together. The
warning event names the session, the tool, the mass and the most recent
untrusted tool result before it. A jump in mass on a forbidden tool
right after a web page or an email body entered the conversation is an
early sign of prompt injection.

An alert is written once per request and target (a denied tool, or
invented names as a whole), at the first step above the threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardrail.audit.attribution import StepAttribution
    from guardrail.policy.model import Policy
    from guardrail.session import Session

__all__ = [
    "DEFAULT_ALERT_THRESHOLD",
    "AlertMonitor",
    "latest_untrusted_result",
    "policy_alert_threshold",
]

DEFAULT_ALERT_THRESHOLD = 0.5

# Characters of an untrusted result kept in an alert: enough to recognise an
# injected instruction, short enough to keep tool output out of the log.
EXCERPT_CHARACTERS = 240


def policy_alert_threshold(policy: Policy | None, default: float) -> float:
    """Return the policy's ``alert_threshold``, or ``default`` if it sets none."""
    value = getattr(policy, "alert_threshold", None)
    return default if value is None else float(value)


def _untrusted_check(policy: Policy | None) -> Callable[[str], bool] | None:
    """Return the policy's test for untrusted tools, or ``None`` if it marks none.

    The compiled policy merges ``untrusted`` from every included fragment, so
    a fragment that marks a tool untrusted counts as well.
    """
    if policy is None:
        return None
    compiled = policy.compiled()
    if not compiled.untrusted:
        return None
    return compiled.is_untrusted


def latest_untrusted_result(
    policy: Policy | None, session: Session
) -> dict[str, Any] | None:
    """Describe the most recent untrusted tool result of ``session``.

    A result is untrusted when its tool message carried ``untrusted: true``
    or the policy lists its tool under ``untrusted``. When neither marks any
    result, the most recent result of any tool is given with ``marked``
    false, because every tool result is text from outside the model. The
    result text is reduced to an excerpt, its length and its sha256.
    """
    is_untrusted = _untrusted_check(policy)
    flagged = [call for call in session.calls if getattr(call, "untrusted", False)]
    marked = is_untrusted is not None or bool(flagged)
    for call in reversed(session.calls):
        if call.result is None:
            continue
        if marked and not (
            getattr(call, "untrusted", False)
            or (is_untrusted is not None and is_untrusted(call.name))
        ):
            continue
        text = call.result
        return {
            "tool": call.name,
            "call_id": call.id,
            "agent_step": call.step,
            "marked": marked,
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "excerpt": text[:EXCERPT_CHARACTERS],
        }
    return None


@dataclass
class AlertMonitor:
    """Decides which attributed steps of one request raise an alert."""

    threshold: float
    untrusted_result: dict[str, Any] | None = None
    _raised: set[tuple[str, str | None]] = field(default_factory=set)

    def check(self, attribution: StepAttribution, step: int) -> list[dict[str, Any]]:
        """Return the fields of each alert that ``attribution`` raises."""
        alerts: list[dict[str, Any]] = []
        invented_mass = 0.0
        invented_name: str | None = None
        invented_best = -1.0

        for item in attribution.items:
            if item.kind == "invented_tool":
                invented_mass += item.mass
                if item.mass > invented_best:
                    invented_best, invented_name = item.mass, item.name
            elif item.kind == "denied_tool" and item.mass > self.threshold:
                alert = self._alert("denied_tool", item.tool, item.mass, step)
                if alert is not None:
                    alert["rule"] = item.rule
                    alert["reason"] = item.reason
                    alerts.append(alert)

        if invented_mass > self.threshold:
            alert = self._alert("invented_tool", invented_name, invented_mass, step)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _alert(
        self, kind: str, tool: str | None, mass: float, step: int
    ) -> dict[str, Any] | None:
        key = (kind, tool if kind == "denied_tool" else None)
        if key in self._raised:
            return None
        self._raised.add(key)
        return {
            "level": "warning",
            "step": step,
            "kind": kind,
            "tool": tool,
            "mass": round(mass, 6),
            "threshold": self.threshold,
            "untrusted_result": self.untrusted_result,
        }
