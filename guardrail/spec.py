"""The per-request guard spec that travels to an inference engine.

The proxy (or a Python caller) evaluates the policy; the engine only needs
the result: the allowed actions, the tool-call format, the enforcement mode
and the ids that join its audit records with the caller's. vLLM passes
per-request data as ``SamplingParams.extra_args``, filled from the HTTP field
``vllm_xargs``, whose values may only be strings, numbers or lists of them,
so the spec travels as one JSON string under the key ``guardrail``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardrail.errors import RequestError
from guardrail.policy.evaluate import AllowedActions, AllowedTool

__all__ = ["SPEC_KEY", "SPEC_VERSION", "GuardSpec", "SpecTool", "spec_from_extra_args"]

SPEC_KEY = "guardrail"
SPEC_VERSION = 1


class SpecTool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    parameters: dict[str, Any]


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

    @classmethod
    def from_actions(cls, actions: AllowedActions, **fields: Any) -> GuardSpec:
        return cls(
            tool_choice=actions.mode,
            parallel_calls=actions.parallel_calls,
            tools=[
                SpecTool(name=t.name, parameters=t.parameters) for t in actions.tools
            ],
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
