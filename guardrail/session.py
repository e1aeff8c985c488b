"""Session state rebuilt from the conversation a request carries.

guardrail keeps no state between requests: every OpenAI-style request holds
the whole conversation, so the calls made so far and their results are read
back from it. The session id is a digest of the conversation's opening (its
system and first user message), so every step of one conversation gets the
same id without the client sending one; ``metadata.session_id`` in the
request overrides it.

A tool message may carry two extra fields that only make a policy stricter:
``untrusted: true`` marks its content as untrusted (in addition to the
policy's ``untrusted`` tools), and ``is_error: true`` (or MCP's ``isError``)
marks the call as failed, as does content that is a JSON object with a
non-empty ``error`` key. A failed call does not satisfy a phase.

Request metadata for policy conditions comes from, in order of precedence,
the headers the proxy passes in (``x-guardrail-user``, ``-agent``,
``-tenant``), the request's ``metadata`` object, and its ``user`` field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from guardrail.request import AssistantMessage, ChatRequest, ToolMessage, UserMessage

__all__ = ["CallRecord", "Session", "session_from_request"]


@dataclass(frozen=True)
class CallRecord:
    """A tool call made earlier in the conversation, with its result if any.

    ``step`` is the 1-based index of the assistant turn that made the call.
    ``untrusted`` is the flag the tool message carried; the policy's own
    ``untrusted`` tools are added when the policy is evaluated.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    step: int
    result: str | None = None
    untrusted: bool = False
    error: bool = False

    @property
    def pending(self) -> bool:
        """True until a tool message returns the call's result."""
        return self.result is None

    @property
    def ok(self) -> bool:
        """True when the call has a result that is not an error."""
        return self.result is not None and not self.error

    def result_json(self) -> Any:
        """Decode the result as JSON; return None when it is not JSON."""
        if self.result is None:
            return None
        try:
            return json.loads(self.result)
        except ValueError:
            return None


@dataclass(frozen=True)
class Session:
    """The state of one conversation that a policy reads at one step.

    ``step`` counts the assistant turns already in the conversation (0 at
    the first turn). ``tool_names`` are the tools the request offers.
    """

    id: str
    calls: tuple[CallRecord, ...] = field(default_factory=tuple)
    step: int = 0
    tool_names: tuple[str, ...] = ()
    user: str = ""
    agent: str = ""
    tenant: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    def count(self, tool: str) -> int:
        return sum(1 for call in self.calls if call.name == tool)

    def counts(self) -> dict[str, int]:
        """Calls per tool name, for the tools called at least once."""
        totals: dict[str, int] = {}
        for call in self.calls:
            totals[call.name] = totals.get(call.name, 0) + 1
        return totals

    @property
    def user_domain(self) -> str:
        """The domain of ``user`` when it is an email address, else ``""``."""
        local, at, domain = self.user.rpartition("@")
        return domain.lower() if at and local and domain else ""

    def with_call(self, name: str, arguments: dict[str, Any]) -> Session:
        """Return the session with one more call of the next turn, no result yet.

        Post-validation checks the calls of one generated turn in order, so
        each counts toward the budgets of the ones after it.
        """
        record = CallRecord(
            id=f"pending-{len(self.calls)}",
            name=name,
            arguments=arguments,
            step=self.step + 1,
        )
        return replace(self, calls=(*self.calls, record))


def session_from_request(
    request: ChatRequest, *, headers: Mapping[str, str] | None = None
) -> Session:
    """Rebuild the session (calls so far, their results, step) from messages.

    ``headers`` are the HTTP headers a proxy received, with names compared
    case-insensitively. Policy conditions read them as ``request.headers``,
    so pass only those a policy may see.
    """
    calls: dict[str, CallRecord] = {}
    order: list[str] = []
    step = 0

    for message in request.messages:
        if isinstance(message, AssistantMessage):
            step += 1
            for call in message.tool_calls or []:
                calls[call.id] = CallRecord(
                    id=call.id,
                    name=call.function.name,
                    arguments=call.function.parsed_arguments(),
                    step=step,
                )
                order.append(call.id)
        elif isinstance(message, ToolMessage) and message.tool_call_id in calls:
            earlier = calls[message.tool_call_id]
            calls[message.tool_call_id] = replace(
                earlier,
                result=message.text,
                untrusted=_flag(message, "untrusted"),
                error=_is_error(message),
            )

    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    metadata = _metadata(request)
    return Session(
        id=_session_id(request),
        calls=tuple(calls[call_id] for call_id in order),
        step=step,
        tool_names=tuple(request.tool_names),
        user=_first_text(
            lowered.get("x-guardrail-user"),
            metadata.get("user"),
            (request.model_extra or {}).get("user"),
        ),
        agent=_first_text(lowered.get("x-guardrail-agent"), metadata.get("agent")),
        tenant=_first_text(lowered.get("x-guardrail-tenant"), metadata.get("tenant")),
        metadata=metadata,
        headers=lowered,
    )


def _metadata(request: ChatRequest) -> dict[str, Any]:
    metadata = (request.model_extra or {}).get("metadata")
    return dict(metadata) if isinstance(metadata, dict) else {}


def _first_text(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return ""


def _flag(message: ToolMessage, name: str) -> bool:
    return (message.model_extra or {}).get(name) is True


def _is_error(message: ToolMessage) -> bool:
    if _flag(message, "is_error") or _flag(message, "isError"):
        return True
    try:
        decoded = json.loads(message.text)
    except ValueError:
        return False
    return isinstance(decoded, dict) and bool(decoded.get("error"))


def _session_id(request: ChatRequest) -> str:
    metadata = getattr(request, "metadata", None)
    if isinstance(metadata, dict) and isinstance(metadata.get("session_id"), str):
        return metadata["session_id"]

    opening: list[dict[str, str]] = []
    for message in request.messages:
        opening.append({"role": message.role, "text": message.text})
        if isinstance(message, UserMessage):
            break
    digest = hashlib.sha256(json.dumps(opening, sort_keys=True).encode()).hexdigest()
    return f"s-{digest[:16]}"
