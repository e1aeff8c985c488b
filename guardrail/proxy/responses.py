"""OpenAI chat-completion bodies and server-sent-event chunks.

A stream is built from the finished, validated turn: the proxy checks every
call before the client sees any byte of it, so a stream never carries the
start of a call that is then withheld. Content and arguments are split into
pieces the way an engine streams them, so clients exercise their usual
delta handling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Completion", "completion_body", "stream_chunks"]

# Characters per streamed piece of content or arguments.
PIECE = 24


@dataclass(frozen=True)
class Completion:
    """The validated turn, ready to render as a body or as a stream."""

    id: str
    model: str
    content: str | None
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    usage: dict[str, Any] | None = None
    created: int = 0

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = list(self.tool_calls)
        return message


def completion_body(completion: Completion) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created or int(time.time()),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": completion.message(),
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
    }
    if completion.usage is not None:
        body["usage"] = completion.usage
    return body


def stream_chunks(completion: Completion, *, include_usage: bool) -> Iterator[str]:
    """Yield the ``data: ...`` events of a stream, ending with ``[DONE]``."""
    created = completion.created or int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": completion.model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        return _event(body)

    yield chunk({"role": "assistant", "content": ""})

    for piece in _pieces(completion.content or ""):
        yield chunk({"content": piece})

    for index, call in enumerate(completion.tool_calls):
        function = call["function"]
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            }
        )
        for piece in _pieces(function["arguments"]):
            yield chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            )

    yield chunk({}, completion.finish_reason)

    if include_usage:
        usage_body = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": completion.model,
            "choices": [],
            "usage": completion.usage,
        }
        yield _event(usage_body)
    yield "data: [DONE]\n\n"


def _pieces(text: str) -> Iterator[str]:
    for start in range(0, len(text), PIECE):
        yield text[start : start + PIECE]


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
