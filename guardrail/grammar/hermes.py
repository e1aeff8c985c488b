"""The Hermes/Qwen tool-call format: ``<tool_call>{...}</tool_call>``.

Each call is a JSON object ``{"name": ..., "arguments": {...}}`` between the
tags.

The grammar is written in llguidance's Lark dialect with one inline ``%json``
schema that lists every allowed tool as an ``anyOf`` branch, so the tool name
and each argument value are constrained token by token. The trigger
``<tool_call>`` is matched as text, so it works whether the tokenizer has it
as one special token or as several ordinary tokens (SmolLM2 splits it into
five). Whitespace is bounded: JSON is compact with ``", "`` and ``": "``
separators, and at most two spaces or newlines sit around the tags.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from guardrail.grammar.formats import ParsedCall, ParsedOutput

if TYPE_CHECKING:
    from guardrail.policy.evaluate import AllowedActions
    from guardrail.request import ChatRequest

__all__ = ["HermesFormat"]

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"

# Upper bound on calls in one turn, so a model that repeats its call cannot
# loop until the token limit.
MAX_PARALLEL_CALLS = 8

# JSON compiler options for llguidance: a fixed layout keeps the number of
# tokens per call bounded and matches how Hermes-style models write calls.
_JSON_LAYOUT = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

_TOOLS_PREAMBLE = (
    "You may call one or more functions to help with the user's request. "
    "The functions are described as JSON Schemas inside <tools></tools>:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, write a JSON object with its name and arguments "
    "between <tool_call> and </tool_call> tags. Only call the functions "
    "listed above."
)


class HermesFormat:
    name = "hermes"

    def render_prompt(self, tokenizer: Any, request: ChatRequest) -> str:
        """Render the conversation with the tokenizer's chat template.

        A template that renders ``tools`` itself (Qwen's does) gets them
        natively. One that ignores them (SmolLM2's does) gets the tool list
        merged into the first system message. Earlier calls become
        ``<tool_call>`` blocks and results ``<tool_response>`` blocks, so the
        model reads its history in the layout it is asked to produce.
        """
        if request.tools and template_renders_tools(tokenizer):
            rendered = tokenizer.apply_chat_template(
                _native_messages(request),
                tools=[tool.model_dump(exclude_none=True) for tool in request.tools],
                tokenize=False,
                add_generation_prompt=True,
            )
            return str(rendered)

        messages = _plain_messages(request)
        if request.tools:
            tools_text = "\n".join(
                json.dumps(tool.model_dump(exclude_none=True), ensure_ascii=False)
                for tool in request.tools
            )
            preamble = _TOOLS_PREAMBLE.format(tools=tools_text)
            if messages and messages[0]["role"] == "system":
                merged = f"{messages[0]['content']}\n\n{preamble}".strip()
                messages[0] = {"role": "system", "content": merged}
            else:
                messages.insert(0, {"role": "system", "content": preamble})

        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    markers = (CALL_START, CALL_END)

    def build_grammar(
        self, actions: AllowedActions, special_markers: frozenset[str] = frozenset()
    ) -> str:
        """Return the Lark grammar for ``actions`` (see the module docstring).

        ``none`` allows free text that never contains ``<tool_call>``;
        ``auto`` allows that text or text followed by calls; ``required``
        starts with a call. With no tool left, the grammar is empty text, so
        end of sequence is the only token. Markers listed in
        ``special_markers`` are single special tokens in the tokenizer and
        are matched as tokens, because llguidance never matches special
        tokens as text.
        """
        if actions.mode == "none" or (actions.mode == "auto" and not actions.tools):
            return _lark("start: TEXT")
        if not actions.tools:
            return _lark('start: ""')

        start_tag = _marker(CALL_START, special_markers)
        end_tag = _marker(CALL_END, special_markers)
        calls = "call WS"
        if actions.parallel_calls:
            more = MAX_PARALLEL_CALLS - 1
            calls = f"call (SEP {start_tag} call){{0,{more}}} WS"
        if actions.mode == "required":
            start = f"start: WS {start_tag} {calls}"
        elif CALL_START in special_markers:
            start = f"start: TEXT | TEXT {start_tag} {calls}"
        else:
            start = f"start: TEXT | text_then_trigger {calls}"

        rules = [
            start,
            f"text_then_trigger[lazy]: ANY {start_tag}",
            f"call: WS arguments WS {end_tag}",
            "arguments: %json " + json.dumps(_call_schema(actions)),
        ]
        return _lark("\n".join(rules))

    def parse_output(self, text: str) -> ParsedOutput:
        """Split ``text`` at ``<tool_call>`` and decode each call's JSON.

        The JSON is decoded before looking for ``</tool_call>``, so an
        argument that contains the end tag text survives intact.
        """
        start = text.find(CALL_START)
        if start < 0:
            return ParsedOutput(content=text, calls=())

        content = text[:start].strip()
        calls: list[ParsedCall] = []
        decoder = json.JSONDecoder(parse_constant=_reject_constant)
        position = start
        while position < len(text):
            if not text.startswith(CALL_START, position):
                return _broken(content, calls, f"unexpected text at {position}")
            position = _skip_space(text, position + len(CALL_START))
            try:
                value, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as err:
                return _broken(content, calls, f"invalid call JSON: {err}")
            call = _to_call(value)
            if call is None:
                return _broken(content, calls, "call JSON needs 'name' and 'arguments'")
            calls.append(call)

            position = _skip_space(text, position)
            if not text.startswith(CALL_END, position):
                return _broken(content, calls, f"missing {CALL_END} at {position}")
            position = _skip_space(text, position + len(CALL_END))

        return ParsedOutput(content=content, calls=tuple(calls))


def _marker(text: str, special_markers: frozenset[str]) -> str:
    return text if text in special_markers else json.dumps(text)


def _lark(body: str) -> str:
    terminals = [
        "%llguidance {}",
        body,
        # Free text: anything that does not contain the call trigger.
        f"TEXT: /(?s:.*)/ & ~/(?s:.*){CALL_START}(?s:.*)/",
        "ANY: /(?s:.*)/",
        r"WS: /[ \n]{0,2}/",
        r"SEP: /[ \n]{0,2}/",
    ]
    return "\n".join(terminals) + "\n"


def _call_schema(actions: AllowedActions) -> dict[str, Any]:
    """Return one JSON schema whose ``anyOf`` branches are the allowed calls.

    Each tool's parameters move under ``arguments`` of its branch, so their
    local ``$ref`` pointers (``#/$defs/X``, ``#/definitions/X``, ``#``) are
    rewritten to definitions hoisted to this schema's root.
    """
    definitions: dict[str, Any] = {}
    branches = []
    for tool in actions.tools:
        arguments = _hoist_definitions(tool.name, tool.parameters, definitions)
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )

    schema: dict[str, Any] = {"x-guidance": _JSON_LAYOUT, "anyOf": branches}
    if definitions:
        schema["$defs"] = definitions
    return schema


def _hoist_definitions(
    tool: str, parameters: dict[str, Any], definitions: dict[str, Any]
) -> dict[str, Any]:
    prefix = f"{tool}."
    root = f"#/$defs/{prefix}"

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        rewritten = {key: rewrite(value) for key, value in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            rewritten["$ref"] = _rewrite_pointer(ref, root)
        return rewritten

    body = {k: v for k, v in parameters.items() if k not in {"$defs", "definitions"}}
    for section in ("$defs", "definitions"):
        for name, definition in (parameters.get(section) or {}).items():
            definitions[f"{prefix}{name}"] = rewrite(definition)

    arguments = rewrite(body)
    if _uses_root_pointer(parameters):
        definitions[f"{prefix}"] = arguments
    return arguments


def _rewrite_pointer(ref: str, root: str) -> str:
    for section in ("#/$defs/", "#/definitions/"):
        if ref.startswith(section):
            return root + ref[len(section) :]
    # Any other local pointer is relative to the parameters themselves.
    return root.rstrip("/") + ref[1:] if ref != "#" else root.rstrip("/")


def _uses_root_pointer(node: Any) -> bool:
    if isinstance(node, list):
        return any(_uses_root_pointer(item) for item in node)
    if not isinstance(node, dict):
        return False
    ref = node.get("$ref")
    sections = ("#/$defs/", "#/definitions/")
    if isinstance(ref, str) and ref.startswith("#") and not ref.startswith(sections):
        return True
    return any(_uses_root_pointer(value) for value in node.values())


def _plain_messages(request: ChatRequest) -> list[dict[str, str]]:
    plain: list[dict[str, str]] = []
    for message in request.messages:
        if message.role in {"system", "developer"}:
            plain.append({"role": "system", "content": message.text})
        elif message.role == "tool":
            block = f"<tool_response>\n{message.text}\n</tool_response>"
            plain.append({"role": "user", "content": block})
        elif message.role == "assistant":
            parts = [message.text] if message.text else []
            for call in getattr(message, "tool_calls", None) or []:
                payload = {
                    "name": call.function.name,
                    "arguments": call.function.parsed_arguments(),
                }
                body = json.dumps(payload, ensure_ascii=False)
                parts.append(f"{CALL_START}\n{body}\n{CALL_END}")
            plain.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            plain.append({"role": "user", "content": message.text})
    return plain


_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "guardrail_template_probe", "parameters": {"type": "object"}},
}


def template_renders_tools(tokenizer: Any) -> bool:
    """Tell whether the chat template puts ``tools`` into the prompt.

    Renders one message with and without a probe tool and compares; a
    template that fails on ``tools`` counts as one that ignores them.
    """
    messages = [{"role": "user", "content": "probe"}]
    try:
        with_tools = tokenizer.apply_chat_template(
            messages, tools=[_PROBE_TOOL], tokenize=False
        )
    except (TypeError, ValueError, KeyError):
        return False
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    return "guardrail_template_probe" in str(with_tools) and with_tools != without


def _native_messages(request: ChatRequest) -> list[dict[str, Any]]:
    native: list[dict[str, Any]] = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.text}
        if message.role == "developer":
            entry["role"] = "system"
        calls = getattr(message, "tool_calls", None) or []
        if calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call.function.parsed_arguments(),
                    },
                }
                for call in calls
            ]
        if message.role == "tool":
            entry["tool_call_id"] = getattr(message, "tool_call_id", "")
        native.append(entry)
    return native


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which JSON does not, and NaN
    # compares false with every bound, so it would pass ``maximum``.
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _to_call(value: Any) -> ParsedCall | None:
    if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
        return None
    name, arguments = value["name"], value["arguments"]
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return ParsedCall(name=name, arguments=arguments)


def _broken(content: str, calls: list[ParsedCall], reason: str) -> ParsedOutput:
    return ParsedOutput(content=content, calls=tuple(calls), error=reason)
