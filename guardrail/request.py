"""The OpenAI chat-completions request body, as far as guardrail reads it.

Only the fields that decide what may be generated are modelled strictly:
``messages``, ``tools``, ``tool_choice`` and ``parallel_tool_calls``. Other
fields (``temperature``, ``stream``, ...) are kept as extra data so a proxy
can forward them unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guardrail.errors import RequestError

__all__ = [
    "AssistantMessage",
    "ChatRequest",
    "FunctionCall",
    "FunctionDefinition",
    "Message",
    "NamedToolChoice",
    "SystemMessage",
    "Tool",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "format_json_path",
    "parse_chat_request",
]

# The OpenAI API accepts function names of 1-64 characters from this set. Holding
# names to it also keeps them safe to embed in a grammar and a prompt.
TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not TOOL_NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"invalid tool name {name!r}: use 1-64 ASCII letters, digits, "
                "'_' or '-'"
            )
        return name


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionCall(_Strict):
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        """Decode ``arguments``, which the OpenAI format carries as a JSON string."""
        return json.loads(self.arguments)


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    text: str | None = None


Content = str | list[_ContentPart] | None


def _content_text(content: Content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")


class _MessageBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    @property
    def text(self) -> str:
        """The message content as plain text (text parts joined)."""
        return _content_text(getattr(self, "content", None))


class SystemMessage(_MessageBase):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(_MessageBase):
    role: Literal["user"]
    content: Content


class AssistantMessage(_MessageBase):
    role: Literal["assistant"]
    content: Content = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_MessageBase):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


class NamedToolChoice(_Strict):
    class _Name(_Strict):
        name: str

    type: Literal["function"]
    function: _Name


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class ChatRequest(BaseModel):
    """A chat-completions request body; unknown fields are kept for forwarding."""

    model_config = ConfigDict(extra="allow", frozen=True)

    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @property
    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools]

    def tool(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.function.name == name:
                return tool
        return None


def format_json_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a JSON path (``$.tools[0].type``)."""
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}"
    return path


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body into a :class:`ChatRequest`.

    Raises :class:`RequestError` naming the first invalid field by JSON path,
    plus the checks pydantic cannot express: duplicate tool names, a named
    ``tool_choice`` that names no tool, and assistant ``tool_calls`` whose
    arguments are not a JSON object.
    """
    if not isinstance(body, dict):
        raise RequestError(
            f"expected a JSON object, got {type(body).__name__}: send a chat "
            "completions body with 'messages' and optionally 'tools'"
        )

    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as err:
        # Of a union's alternatives, the deepest error is the most specific.
        first = max(err.errors(), key=lambda e: len(_drop_union_tags(e["loc"])))
        raise RequestError(
            first["msg"], path=format_json_path(_drop_union_tags(first["loc"]))
        ) from err

    _check_tools(request)
    _check_tool_choice(request)
    _check_history(request)

    return request


def _drop_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Remove the union member names pydantic inserts into error paths.

    They are the role tag after ``messages[i]`` and names such as
    ``literal['auto','none','required']`` or ``NamedToolChoice`` under
    ``tool_choice``; none of them is a key of the request body.
    """
    kept: list[int | str] = []
    for index, part in enumerate(loc):
        after_message = index >= 2 and loc[index - 2] == "messages"
        if after_message and isinstance(loc[index - 1], int):
            continue
        if isinstance(part, str) and (
            part.startswith(("literal[", "function-")) or part[:1].isupper()
        ):
            continue
        kept.append(part)
    return tuple(kept)


def _check_tools(request: ChatRequest) -> None:
    seen: set[str] = set()
    for index, tool in enumerate(request.tools):
        name = tool.function.name
        if name in seen:
            raise RequestError(
                f"duplicate tool name {name!r}: each tool needs a unique name",
                path=f"$.tools[{index}].function.name",
            )
        seen.add(name)

        parameters = tool.function.parameters
        if parameters is not None and parameters.get("type", "object") != "object":
            raise RequestError(
                f"tool parameters must be a JSON Schema of type 'object', got "
                f"{parameters.get('type')!r}",
                path=f"$.tools[{index}].function.parameters.type",
            )


def _check_tool_choice(request: ChatRequest) -> None:
    choice = request.tool_choice
    if (
        isinstance(choice, NamedToolChoice)
        and request.tool(choice.function.name) is None
    ):
        raise RequestError(
            f"tool_choice names {choice.function.name!r}, which is not in 'tools'; "
            f"available: {', '.join(request.tool_names) or 'none'}",
            path="$.tool_choice.function.name",
        )


def _check_history(request: ChatRequest) -> None:
    for m_index, message in enumerate(request.messages):
        if not isinstance(message, AssistantMessage) or not message.tool_calls:
            continue
        for c_index, call in enumerate(message.tool_calls):
            path = f"$.messages[{m_index}].tool_calls[{c_index}].function.arguments"
            try:
                arguments = call.function.parsed_arguments()
            except json.JSONDecodeError as err:
                raise RequestError(
                    f"arguments are not valid JSON ({err.msg} at character "
                    f"{err.pos}): send them as a JSON-encoded object string",
                    path=path,
                ) from err
            if not isinstance(arguments, dict):
                raise RequestError(
                    "arguments must encode a JSON object, got "
                    f"{type(arguments).__name__}",
                    path=path,
                )
