"""Parsing OpenAI chat requests into the models guardrail reads."""

from __future__ import annotations

import pytest

from guardrail.errors import RequestError
from guardrail.request import AssistantMessage, parse_chat_request

USER = {"role": "user", "content": "hi"}


def tool(name, parameters=None):
    function = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def test_minimal_request_parses():
    request = parse_chat_request({"messages": [USER]})
    assert request.tools == []
    assert request.tool_choice is None


def test_extra_fields_are_kept_for_forwarding():
    request = parse_chat_request({"messages": [USER], "temperature": 0.2})
    assert request.model_extra == {"temperature": 0.2}


def test_content_parts_join_as_text():
    content = [
        {"type": "text", "text": "a"},
        {"type": "image_url"},
        {"type": "text", "text": "b"},
    ]
    request = parse_chat_request({"messages": [{"role": "user", "content": content}]})
    assert request.messages[0].text == "ab"


def test_duplicate_tool_names_are_rejected():
    body = {"messages": [USER], "tools": [tool("a"), tool("a")]}
    with pytest.raises(RequestError, match=r"\$\.tools\[1\]\.function\.name"):
        parse_chat_request(body)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "naïve", "a.b"])
def test_invalid_tool_names_are_rejected(name):
    with pytest.raises(RequestError, match="invalid tool name"):
        parse_chat_request({"messages": [USER], "tools": [tool(name)]})


def test_non_object_parameters_are_rejected():
    body = {"messages": [USER], "tools": [tool("a", {"type": "array"})]}
    with pytest.raises(RequestError, match=r"parameters\.type"):
        parse_chat_request(body)


def test_history_arguments_must_be_json_objects():
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "a", "arguments": "[1]"},
    }
    body = {"messages": [USER, {"role": "assistant", "tool_calls": [call]}]}
    with pytest.raises(RequestError, match=r"messages\[1\]\.tool_calls\[0\]"):
        parse_chat_request(body)


def test_history_arguments_must_parse():
    call = {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{"}}
    body = {"messages": [USER, {"role": "assistant", "tool_calls": [call]}]}
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_chat_request(body)


def test_assistant_tool_calls_parse():
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "a", "arguments": "{}"},
    }
    request = parse_chat_request(
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [call]},
            ]
        }
    )
    assert isinstance(request.messages[1], AssistantMessage)
    assert request.messages[1].tool_calls[0].function.parsed_arguments() == {}


def test_role_tag_is_dropped_from_error_path():
    with pytest.raises(RequestError, match=r"^\$\.messages\[0\]\.content: "):
        parse_chat_request({"messages": [{"role": "user"}]})


@pytest.mark.parametrize(
    ("choice", "path"),
    [
        ("sometimes", r"^\$\.tool_choice: "),
        ({"type": "function"}, r"^\$\.tool_choice\.function: "),
    ],
)
def test_tool_choice_errors_use_request_paths(choice, path):
    with pytest.raises(RequestError, match=path):
        parse_chat_request({"messages": [USER], "tool_choice": choice})
