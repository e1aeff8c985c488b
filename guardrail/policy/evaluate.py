"""Decide the allowed actions for the next step of a session.

Semantics: default deny (unless the policy says ``default: allow``); a tool
the policy forbids can never be generated; ``tool_choice`` from the request
can only narrow what the policy allows, never widen it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from guardrail.policy.constraints import narrow_parameters
from guardrail.policy.model import Policy
from guardrail.request import ChatRequest, NamedToolChoice
from guardrail.session import Session

__all__ = [
    "AllowedActions",
    "AllowedTool",
    "Decision",
    "Mode",
    "evaluate_policy",
]

Mode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class AllowedTool:
    """A tool that may be called, with the schema its arguments must satisfy."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """Why a tool is allowed or blocked at this step."""

    tool: str
    allowed: bool
    reason: str


@dataclass(frozen=True)
class AllowedActions:
    """Everything the grammar needs: the mode, the tools and their schemas.

    ``mode`` is ``none`` (no call can start), ``auto`` (text, or calls to the
    allowed tools) or ``required`` (at least one call to an allowed tool).
    When ``required`` leaves no tool, the grammar allows only end of sequence.
    """

    mode: Mode
    tools: tuple[AllowedTool, ...]
    parallel_calls: bool = True
    decisions: tuple[Decision, ...] = field(default=(), compare=False)

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools)

    def tool(self, name: str) -> AllowedTool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None

    def cache_key(self) -> str:
        """Return a digest of the fields that shape the grammar."""
        payload = {
            "mode": self.mode,
            "parallel_calls": self.parallel_calls,
            "tools": [[tool.name, tool.parameters] for tool in self.tools],
        }
        encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


def evaluate_policy(
    policy: Policy, request: ChatRequest, session: Session
) -> AllowedActions:
    """Return the allowed actions for the next assistant turn.

    ``session`` is unused by the per-tool allow list but is part of the
    contract, because conditions on history are evaluated here.
    """
    del session
    decisions: list[Decision] = []
    allowed: list[AllowedTool] = []

    for tool in request.tools:
        name = tool.function.name
        rule = policy.rule(name)
        if rule is None:
            permitted = policy.default == "allow"
            reason = f"default: {policy.default}"
        else:
            permitted = rule.allow
            reason = f"tools.{name}.allow: {str(rule.allow).lower()}"

        decisions.append(Decision(tool=name, allowed=permitted, reason=reason))
        if permitted:
            constraints = rule.arguments if rule is not None else {}
            parameters = narrow_parameters(tool.function.parameters, constraints)
            allowed.append(AllowedTool(name=name, parameters=parameters))

    mode, allowed = _apply_tool_choice(request, allowed, decisions)
    if mode == "none":
        allowed = []

    return AllowedActions(
        mode=mode,
        tools=tuple(allowed),
        parallel_calls=request.parallel_tool_calls,
        decisions=tuple(decisions),
    )


def _apply_tool_choice(
    request: ChatRequest, allowed: list[AllowedTool], decisions: list[Decision]
) -> tuple[Mode, list[AllowedTool]]:
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        for index, decision in enumerate(decisions):
            if decision.tool != name and decision.allowed:
                decisions[index] = Decision(
                    tool=decision.tool,
                    allowed=False,
                    reason=f"tool_choice names {name!r}",
                )
        return "required", [tool for tool in allowed if tool.name == name]

    if choice is None:
        return ("auto" if request.tools else "none"), allowed
    return choice, allowed
