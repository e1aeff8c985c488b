"""Property: whatever the logits and sampling, a finished generation complies.

Random policies over random tool schemas, random logits at every step and
random sampling drive the real grammar and masking core with the real
tokenizer (no model: the logits are the random part). Every generation that
ends with end of sequence must parse into calls that are allowed at this
step and satisfy both the tool's schema and the policy's constraints.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guardrail.errors import RequestError
from guardrail.guard import Guard
from guardrail.policy.loader import load_policy_text
from guardrail.processors.core import TokenMasker
from guardrail.request import parse_chat_request

MAX_STEPS = 160


@st.composite
def argument_schemas(draw):
    kind = draw(st.sampled_from(["integer", "enum", "string", "boolean", "pattern"]))
    if kind == "integer":
        low = draw(st.integers(-50, 50))
        return {
            "type": "integer",
            "minimum": low,
            "maximum": low + draw(st.integers(0, 60)),
        }
    if kind == "enum":
        values = draw(
            st.lists(
                st.sampled_from(["red", "green", "blue", "x y", "é"]),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        return {"type": "string", "enum": values}
    if kind == "string":
        return {"type": "string", "maxLength": draw(st.integers(0, 6))}
    if kind == "pattern":
        return {"type": "string", "pattern": "^[a-c]{1,4}$"}
    return {"type": "boolean"}


@st.composite
def constraint_for(draw, schema):
    if schema.get("type") == "integer" and draw(st.booleans()):
        return {"maximum": draw(st.integers(schema["minimum"], schema["maximum"]))}
    if schema.get("type") == "string" and "maxLength" in schema and draw(st.booleans()):
        return {"maxLength": draw(st.integers(0, schema["maxLength"]))}
    return None


@st.composite
def scenarios(draw):
    tool_count = draw(st.integers(1, 4))
    tools, rules = [], {}
    for index in range(tool_count):
        name = f"tool_{index}"
        properties = {
            f"arg_{i}": draw(argument_schemas()) for i in range(draw(st.integers(0, 3)))
        }
        required = [key for key in properties if draw(st.booleans())]
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "parameters": {
                        "type": "object",
                        "properties": properties,
                        "required": required,
                    },
                },
            }
        )
        if draw(st.booleans()):
            rules[name] = {"allow": False}
        elif draw(st.booleans()):
            arguments = {}
            for key, schema in properties.items():
                constraint = draw(constraint_for(schema))
                if constraint:
                    arguments[key] = constraint
            rules[name] = {"allow": True, "arguments": arguments}

    choice = draw(st.sampled_from(["auto", "required", "none", "named"]))
    tool_choice = (
        {
            "type": "function",
            "function": {
                "name": draw(st.sampled_from([t["function"]["name"] for t in tools]))
            },
        }
        if choice == "named"
        else choice
    )
    policy = {
        "policy": "random",
        "default": draw(st.sampled_from(["deny", "allow"])),
        "tools": rules,
    }
    request = {
        "messages": [{"role": "user", "content": "go"}],
        "tools": tools,
        "tool_choice": tool_choice,
        "parallel_tool_calls": draw(st.booleans()),
    }
    return (
        policy,
        request,
        draw(st.integers(0, 2**31 - 1)),
        draw(st.sampled_from([0.5, 1.0, 2.0])),
        draw(st.floats(0.0, 12.0)),
    )


@pytest.fixture(scope="module")
def guard_factory(hf_tokenizer):
    cache = {}

    def build(policy_data):
        policy = load_policy_text(json.dumps(policy_data), source="<random>")
        guard = Guard(policy, hf_tokenizer)
        if "compiler" in cache:
            guard.compiler = cache["compiler"]
        cache["compiler"] = guard.compiler
        return guard

    return build


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_finished_generations_comply(guard_factory, scenario):
    policy_data, body, seed, temperature, eos_bias = scenario
    guard = guard_factory(policy_data)
    request = parse_chat_request(body)
    try:
        prepared = guard.prepare(request)
    except RequestError:
        # tool_choice named a tool the policy denies: rejected up front.
        assert isinstance(body["tool_choice"], dict)
        event("named tool denied, request rejected")
        return
    sequence = guard.new_sequence(prepared, audit=None)
    compiler = guard.compiler
    masker = TokenMasker(compiler.vocab_size, compiler.eos_token_id, lambda t: "")
    generator = torch.Generator().manual_seed(seed)

    tokens: list[int] = []
    stopped = False
    for _ in range(MAX_STEPS):
        logits = torch.randn(1, compiler.vocab_size, generator=generator) * 3
        logits[0, compiler.eos_token_id] += eos_bias
        masker.apply(logits, [sequence])
        assert torch.isfinite(logits[0]).any(), "a row was left all -inf"
        probabilities = torch.softmax(logits[0] / temperature, dim=-1)
        token = int(torch.multinomial(probabilities, 1, generator=generator))
        sequence.accept_token(token)
        if token == compiler.eos_token_id:
            stopped = True
            break
        tokens.append(token)

    assert sequence.error is None
    if not stopped:
        event("hit the step limit")
        return

    text = compiler.tokenizer.decode_str(tokens)
    result = guard.finish(prepared, text, stopped=True, sequence=sequence, audit=None)
    assert result.validation.passed, (text, result.validation.errors)
    event(f"finished with {min(len(result.output.calls), 2)} calls (2 means 2+)")
    allowed = set(prepared.actions.tool_names)
    for call in result.output.calls:
        assert call.name in allowed
        own = request.tool(call.name).function.parameters
        jsonschema.validate(call.arguments, own)
        jsonschema.validate(call.arguments, prepared.actions.tool(call.name).parameters)
