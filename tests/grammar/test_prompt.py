"""Prompt rendering of tools and history for the Hermes format."""

from __future__ import annotations

import copy
import json

import pytest

from guardrail.grammar.hermes import HermesFormat, template_renders_tools
from guardrail.request import parse_chat_request

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Zürich"})},
}
BODY = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
    ],
    "tools": TOOLS,
}

# A minimal tool-aware ChatML template: a stand-in for templates such as
# Qwen's, which render `tools` themselves.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} "
    "{{ t.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} "
    "{{ c.function.arguments | tojson }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def prompt(hf_tokenizer) -> str:
    return HermesFormat().render_prompt(hf_tokenizer, parse_chat_request(BODY))


def test_smollm2_template_ignores_tools(hf_tokenizer):
    assert not template_renders_tools(hf_tokenizer)


def test_tools_merge_into_one_system_turn(prompt):
    assert prompt.count("<|im_start|>system") == 1
    system = prompt.split("<|im_end|>")[0]
    assert "Be brief." in system
    assert '"name": "get_weather"' in system


def test_history_call_renders_as_block(prompt):
    body = '{"name": "get_weather", "arguments": {"city": "Zürich"}}'
    assert f"<tool_call>\n{body}\n</tool_call>" in prompt


def test_tool_result_renders_as_response(prompt):
    assert "<tool_response>\n12 C, rain\n</tool_response>" in prompt


def test_prompt_has_no_placeholders(prompt):
    for placeholder in ("function_name", "{...}", "<function-name>"):
        assert placeholder not in prompt


def test_prompt_ends_with_assistant_turn(prompt):
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tool_aware_template_gets_tools_natively(hf_tokenizer):
    tokenizer = copy.deepcopy(hf_tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE
    assert template_renders_tools(tokenizer)

    prompt = HermesFormat().render_prompt(tokenizer, parse_chat_request(BODY))
    assert prompt.startswith("<|im_start|>system\nTOOLS: get_weather")
    assert 'CALL get_weather {"city": "Z' in prompt
    assert "<tools>" not in prompt
