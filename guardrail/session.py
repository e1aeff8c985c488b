"""Session state rebuilt from the conversation a request carries.

guardrail keeps no state between requests: every OpenAI-style request holds
the whole conversation, so the calls made so far and their results are read
back from it. The session id is a digest of the conversation's opening (its
system and first user message), so every step of one conversation gets the
same id without the client sending one; ``metadata.session_id`` in the
request overrides it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from guardrail.request import AssistantMessage, ChatRequest, ToolMessage, UserMessage

__all__ = ["CallRecord", "Session", "session_from_request"]


@dataclass(frozen=True)
class CallRecord:
    """A tool call made earlier in the conversation, with its result if any."""

    id: str
    name: str
    arguments: dict[str, Any]
    step: int
    result: str | None = None


@dataclass(frozen=True)
class Session:
    id: str
    calls: tuple[CallRecord, ...] = field(default_factory=tuple)
    step: int = 0

    def count(self, tool: str) -> int:
        return sum(1 for call in self.calls if call.name == tool)


def session_from_request(request: ChatRequest) -> Session:
    """Rebuild the session (calls so far, their results, step) from messages."""
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
            calls[message.tool_call_id] = CallRecord(
                id=earlier.id,
                name=earlier.name,
                arguments=earlier.arguments,
                step=earlier.step,
                result=message.text,
            )

    return Session(
        id=_session_id(request),
        calls=tuple(calls[call_id] for call_id in order),
        step=step,
    )


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
