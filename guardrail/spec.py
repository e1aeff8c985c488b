"""The per-request guard spec that travels to an inference engine.

The proxy (or a Python caller) evaluates the policy; the engine only needs
the result: the allowed actions, the tool-call format, the enforcement mode
and the ids that join its audit records with the caller's. The optional
audit fields (the policy's decision per tool, the request's tool names, the
policy's argument limits and the latest untrusted tool result, as an
excerpt) let the engine attribute blocked mass and raise alerts as the
in-process path does; a spec without them is still valid. vLLM passes
per-request data as ``SamplingParams.extra_args``, filled from the HTTP field
``vllm_xargs``, whose values may only be strings, numbers or lists of them,
so the spec travels as one JSON string under the key ``guardrail``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardrail.errors import RequestError
from guardrail.policy.evaluate import AllowedActions, AllowedTool

if TYPE_CHECKING:
    from guardrail.policy.model import Policy
    from guardrail.session import Session

__all__ = [
    "SPEC_KEY",
    "SPEC_VERSION",
    "GuardSpec",
    "SpecDecision",
    "SpecTool",
    "spec_from_extra_args",
]

SPEC_KEY = "guardrail"
SPEC_VERSION = 1


class SpecTool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    parameters: dict[str, Any]


class SpecDecision(BaseModel):
    """The policy's decision on one tool of the request, for attribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str
    allowed: bool
    reason: str
    rule: str | None = None
    source: str | None = None
    line: int | None = None


class GuardSpec(BaseModel):
    """Everything an engine needs to guard one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = SPEC_VERSION
    request_id: str = Field(min_length=1)
    session_id: str = ""
    policy: str
    policy_sha256: str
    mode: Literal["enforce", "shadow"] = "enforce"
    format: str = "hermes"
    tool_choice: Literal["none", "auto", "required"]
    parallel_calls: bool = True
    tools: list[SpecTool] = Field(default_factory=list)
    alert_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    decisions: list[SpecDecision] = Field(default_factory=list)
    request_tools: list[str] = Field(default_factory=list)
    policy_arguments: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict)
    untrusted_result: dict[str, Any] | None = None

    @classmethod
    def from_actions(
        cls,
        actions: AllowedActions,
        *,
        policy_object: Policy | None = None,
        session: Session | None = None,
        request_tools: list[str] | None = None,
        **fields: Any,
    ) -> GuardSpec:
        """Build the spec of ``actions``, with the audit fields when it can.

        The decisions always come from ``actions``. With ``policy_object``,
        the spec also carries the policy's argument limits on each allowed
        tool, and the policy's own ``alert_threshold`` replaces the one in
        ``fields``. With ``session`` too, it carries the latest untrusted tool
        result as an excerpt, its length and its sha256.
        """
        from guardrail.audit.alerts import (
            DEFAULT_ALERT_THRESHOLD,
            latest_untrusted_result,
            policy_alert_threshold,
        )
        from guardrail.audit.attribution import policy_constraints

        extra: dict[str, Any] = {}
        policy = policy_object
        if policy is not None:
            extra["policy_arguments"] = {
                tool.name: found
                for tool in actions.tools
                if (found := policy_constraints(policy, tool.name))
            }
            fields["alert_threshold"] = policy_alert_threshold(
                policy, fields.get("alert_threshold", DEFAULT_ALERT_THRESHOLD)
            )
            if session is not None:
                extra["untrusted_result"] = latest_untrusted_result(policy, session)
        return cls(
            tool_choice=actions.mode,
            parallel_calls=actions.parallel_calls,
            tools=[
                SpecTool(name=t.name, parameters=t.parameters) for t in actions.tools
            ],
            decisions=[
                SpecDecision(
                    tool=d.tool,
                    allowed=d.allowed,
                    reason=d.reason,
                    rule=d.rule,
                    source=d.source,
                    line=d.line,
                )
                for d in actions.decisions
            ],
            request_tools=list(request_tools or ()),
            **extra,
            **fields,
        )

    def actions(self) -> AllowedActions:
        return AllowedActions(
            mode=self.tool_choice,
            tools=tuple(
                AllowedTool(name=t.name, parameters=t.parameters) for t in self.tools
            ),
            parallel_calls=self.parallel_calls,
        )

    def to_vllm_xargs(self) -> dict[str, str]:
        """Return the ``vllm_xargs`` entry that carries this spec."""
        return {SPEC_KEY: self.model_dump_json()}


def spec_from_extra_args(extra_args: dict[str, Any] | None) -> GuardSpec | None:
    """Read the spec from ``SamplingParams.extra_args``; ``None`` if absent.

    Raises :class:`RequestError` (HTTP 400 in vLLM) for a spec that is present
    but invalid, so a malformed spec never means an unguarded request.
    """
    if not extra_args or SPEC_KEY not in extra_args:
        return None
    raw = extra_args[SPEC_KEY]
    if not isinstance(raw, str):
        raise RequestError(
            f"vllm_xargs.{SPEC_KEY} must be a JSON string, got {type(raw).__name__}",
            path=f"$.vllm_xargs.{SPEC_KEY}",
        )
    try:
        return GuardSpec.model_validate(json.loads(raw))
    except json.JSONDecodeError as err:
        raise RequestError(
            f"vllm_xargs.{SPEC_KEY} is not valid JSON ({err.msg} at {err.pos})",
            path=f"$.vllm_xargs.{SPEC_KEY}",
        ) from err
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(
            f"invalid guard spec at {where}: {first['msg']}",
            path=f"$.vllm_xargs.{SPEC_KEY}",
        ) from err
