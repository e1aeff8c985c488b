"""Chat requests with a call history, built for the policy tests."""

from __future__ import annotations

import json
from typing import Any

from guardrail.request import ChatRequest, parse_chat_request

Call = tuple[str, dict[str, Any], Any]


def _tool(name: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": properties or {}},
        },
    }


def build_request(
    tools: dict[str, dict[str, Any] | None],
    history: list[Call] | None = None,
    **fields: Any,
) -> ChatRequest:
    """Return a request whose history makes one call per assistant turn.

    Each history entry is ``(tool, arguments, result)``; a result of None
    leaves the call unanswered, and a dict result is sent as JSON. Extra
    keyword fields go into the request body (``user``, ``metadata``,
    ``tool_choice``) or, as ``tool_messages``, into every tool message.
    """
    extra_tool_fields = fields.pop("tool_messages", {})
    messages: list[dict[str, Any]] = [{"role": "user", "content": "help"}]
    for index, (name, arguments, result) in enumerate(history or []):
        call_id = f"call_{index}"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                ],
            }
        )
        if result is not None:
            content = result if isinstance(result, str) else json.dumps(result)
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": content,
                    **extra_tool_fields.get(index, {}),
                }
            )
    body = {
        "messages": messages,
        "tools": [_tool(name, props) for name, props in tools.items()],
        **fields,
    }
    return parse_chat_request(body)
