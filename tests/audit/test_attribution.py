"""Attribution of blocked mass: unit cases on the real tokenizer, and the real model.

The unit cases build the generated text with the real tokenizer and give
hand-made blocked candidates, so each case states exactly what the model
was writing. The model test compares the mass attributed to a denied tool
with the probability the model itself gives to every token that starts
that tool's name, computed over the whole vocabulary.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from baits import SUPPORT_POLICY, delete_request

from guardrail.audit.attribution import (
    StepAttributor,
    ToolCatalog,
    scan_partial_json,
)
from guardrail.grammar.compiler import GrammarCompiler
from guardrail.grammar.hermes import HermesFormat
from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.loader import load_policy_text
from guardrail.processors.core import BlockedToken, StepRecord
from guardrail.request import parse_chat_request
from guardrail.session import session_from_request

CALL = "<tool_call>\n"


@pytest.fixture(scope="module")
def compiler(hf_tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(hf_tokenizer, HermesFormat())


@pytest.fixture(scope="module")
def support() -> Any:
    return load_policy_text(SUPPORT_POLICY, source="bait-support.yaml")


def catalog_for(policy: Any, body: dict[str, Any]) -> ToolCatalog:
    request = parse_chat_request(body)
    actions = evaluate_policy(policy, request, session_from_request(request))
    return ToolCatalog.from_actions(actions, policy)


def attribute(
    compiler: GrammarCompiler,
    hf_tokenizer: Any,
    catalog: ToolCatalog,
    text: str,
    candidates: list[tuple[str, float]],
    *,
    blocked_mass: float | None = None,
) -> Any:
    """Attribute one step after ``text`` with blocked ``candidates``."""
    tokens = hf_tokenizer.encode(text, add_special_tokens=False)
    top = tuple(
        BlockedToken(token_id=0, text=candidate, probability=mass)
        for candidate, mass in candidates
    )
    mass = blocked_mass if blocked_mass is not None else sum(m for _, m in candidates)
    record = StepRecord(
        step=len(tokens), blocked_mass=mass, allowed_tokens=1, top_blocked=top
    )
    attributor = StepAttributor(catalog, compiler.tokenizer.decode_bytes)
    return attributor.attribute(record, tokens)


def items_of(attribution: Any) -> list[dict[str, Any]]:
    return [item.to_json() for item in attribution.items]


def test_name_step_denied_tool_with_rule(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler, hf_tokenizer, catalog, CALL + '{"name": "', [("delete", 0.3)]
    )

    assert result.context == "tool_name"
    assert result.prefix == ""
    [item] = items_of(result)
    assert item["kind"] == "denied_tool"
    assert item["tool"] == "delete_customer"
    assert item["mass"] == pytest.approx(0.3)
    assert item["reason"] == "forbidden"
    assert item["rule"].startswith("tools.delete_customer (bait-support.yaml:")


def test_name_step_closed_denied_name(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler,
        hf_tokenizer,
        catalog,
        CALL + '{"name": "delete_custome',
        [('r"', 0.2)],
    )

    assert result.prefix == "delete_custome"
    assert items_of(result)[0]["tool"] == "delete_customer"


def test_name_step_invented_names_decoded(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler,
        hf_tokenizer,
        catalog,
        CALL + '{"name": "re',
        [("move", 0.25), ("fund_money", 0.05)],
    )

    names = {item["name"]: item["mass"] for item in items_of(result)}
    assert names == {"remove": pytest.approx(0.25), "refund_money": pytest.approx(0.05)}
    assert all(item["kind"] == "invented_tool" for item in items_of(result))


def test_name_step_allowed_prefix_is_tokenization(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler, hf_tokenizer, catalog, CALL + '{"name": "se', [("arch", 0.4)]
    )

    assert items_of(result)[0]["kind"] == "tokenization"


def test_name_step_layout_break_is_malformed(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler, hf_tokenizer, catalog, CALL + '{"name": "', [("\n{", 0.4)]
    )

    assert items_of(result)[0]["kind"] == "malformed"


def test_unattributed_is_rest_of_mass(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler,
        hf_tokenizer,
        catalog,
        CALL + '{"name": "',
        [("delete", 0.3), ("Close", 0.1)],
        blocked_mass=0.9,
    )

    assert result.unattributed == pytest.approx(0.5)


def test_step_below_min_mass_not_attributed(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    result = attribute(
        compiler, hf_tokenizer, catalog, CALL + '{"name": "', [("delete", 0.001)]
    )

    assert result is None


REFUND = CALL + '{"name": "refund_order", "arguments": {'


@pytest.mark.parametrize(
    ("text", "candidate", "expected"),
    [
        (
            REFUND + '"order_id": "O-5521", "amount": 15',
            "0",
            {
                "argument": "amount",
                "constraint": "maximum",
                "limit": 100,
                "source": "policy",
                "rule": "tools.refund_order.arguments.amount.maximum",
                "example": "150",
            },
        ),
        (
            REFUND + '"order_id": "O-5521", "amount": ',
            '"',
            {"argument": "amount", "constraint": "type", "limit": "number"},
        ),
        (
            REFUND + '"order_id": "O-5521"',
            "}",
            {"argument": "order_id", "constraint": "required", "limit": ["amount"]},
        ),
        (
            REFUND + '"order_id": "O-5521", "amount": 80',
            ", ",
            {"argument": "amount", "constraint": "additionalProperties"},
        ),
        (
            REFUND + '"',
            "amount",
            {"argument": "amount", "constraint": "order", "source": "grammar"},
        ),
    ],
)
def test_argument_step_names_constraint(
    compiler, hf_tokenizer, support, text, candidate, expected
):
    body = delete_request("s")
    catalog = catalog_for(support, body)
    result = attribute(compiler, hf_tokenizer, catalog, text, [(candidate, 0.6)])

    assert result.context == "arguments"
    assert result.tool == "refund_order"
    [item] = items_of(result)
    assert item["kind"] == "argument"
    for key, value in expected.items():
        assert item[key] == value, key


def test_argument_step_pattern_on_closed_string(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    text = CALL + '{"name": "search_orders", "arguments": {"customer_id": "X12'
    result = attribute(compiler, hf_tokenizer, catalog, text, [('"}', 0.5)])

    [item] = items_of(result)
    assert item["constraint"] == "pattern"
    assert item["limit"] == "^C[0-9]{6}$"
    assert item["source"] == "policy"


def test_argument_step_unknown_key(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    text = REFUND + '"order_id": "O-5521", "'
    result = attribute(compiler, hf_tokenizer, catalog, text, [("reason", 0.5)])

    [item] = items_of(result)
    assert item["kind"] == "unknown_argument"
    assert item["argument"] == "reason"


def test_text_step_call_start_in_none_mode(compiler, hf_tokenizer, support):
    body = {**delete_request("s"), "tool_choice": "none"}
    catalog = catalog_for(support, body)
    result = attribute(
        compiler, hf_tokenizer, catalog, "Sure. <tool_", [("call>", 0.7), ("s", 0.1)]
    )

    kinds = {item["kind"]: item["mass"] for item in items_of(result)}
    assert result.context == "text"
    assert kinds == {"call_start": pytest.approx(0.7), "text": pytest.approx(0.1)}


def test_catalog_none_mode_denies_everything(support):
    body = {**delete_request("s"), "tool_choice": "none"}
    catalog = catalog_for(support, body)

    assert catalog.allowed == {}
    assert catalog.denied["search_orders"][1] == "tool_choice is 'none'"
    assert catalog.denied["delete_customer"][1] == "forbidden"


def test_after_call_end_is_text(compiler, hf_tokenizer, support):
    catalog = catalog_for(support, delete_request("s"))
    text = REFUND + '"order_id": "O-5521", "amount": 80}}\n</tool_call>\n'
    result = attribute(compiler, hf_tokenizer, catalog, text, [("Done", 0.9)])

    assert result.context == "text"


@pytest.mark.parametrize(
    ("text", "kind", "path", "partial"),
    [
        ("{", "key", [], None),
        ('{"a": 1, "b', "key", [], "b"),
        ('{"a": "x\\"y', "value", ["a"], 'x\\"y'),
        ('{"a": {"b": [1, 2', "value", ["a", "b", 1], "2"),
        ('{"a": {"b": [1, 2], "c": tr', "value", ["a", "c"], "tr"),
        ('{"a": 10', "value", ["a"], "10"),
        ('{"a": "x"', "after_value", ["a"], None),
    ],
)
def test_scan_partial_json_states(text, kind, path, partial):
    state = scan_partial_json(text)

    assert state is not None
    assert state.kind == kind
    assert state.path == path
    assert state.partial == partial


def test_scan_partial_json_closed_object():
    assert scan_partial_json('{"a": 1}') is None


@pytest.mark.model
def test_denied_tool_mass_matches_model(backend, support):
    """The mass on delete_customer at the name step is what the model gives it."""
    from guardrail.audit.log import AuditSink

    guard = backend.guard(support)
    captured: list[tuple[list[int], Any, Any]] = []
    open_audit = guard.open_audit

    def recording_audit(prepared: Any, sink: Any, *, engine: str) -> Any:
        audit = open_audit(prepared, sink, engine=engine)
        on_step = audit.on_step

        def record(sequence: Any, step: Any) -> None:
            tokens = list(sequence.tokens)
            on_step(sequence, step)
            attribution = audit.attributor.attribute(step, tokens)
            captured.append((tokens, step, attribution))

        audit.on_step = record
        captured.append(([], prepared, None))
        return audit

    guard.open_audit = recording_audit  # type: ignore[method-assign]
    request = parse_chat_request(delete_request("s-model"))
    backend.generate(
        guard, request, sink=AuditSink(_Discard()), max_tokens=24, request_id="r"
    )

    prepared = captured[0][1]
    name_steps = [
        (tokens, step, attribution)
        for tokens, step, attribution in captured[1:]
        if attribution is not None
        and attribution.context == "tool_name"
        and attribution.prefix == ""
    ]
    assert name_steps, "the model never reached the tool-name step"
    tokens, _, attribution = name_steps[0]

    attributed = sum(
        item.mass
        for item in attribution.items
        if item.kind == "denied_tool" and item.tool == "delete_customer"
    )
    expected = _model_mass_on_name(backend, guard, prepared.prompt, tokens)

    assert expected > 0.01, "the bait no longer tempts the model"
    assert attributed <= expected + 1e-4
    assert attributed >= 0.8 * expected


def _model_mass_on_name(backend: Any, guard: Any, prompt: str, tokens: list[int]):
    """Sum the model's probability of every token that starts delete_customer."""
    prompt_ids = backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + tokens])
    with torch.inference_mode():
        logits = backend.model(ids).logits[0, -1].float()
    probabilities = torch.softmax(logits, dim=-1)

    allowed = ("search_orders", "refund_order")
    total = 0.0
    for token_id in range(len(backend.tokenizer)):
        text = guard.compiler.tokenizer.decode_str([token_id])
        name = text.split('"', 1)[0]
        closed = '"' in text
        if not name:
            continue
        if closed and name != "delete_customer":
            continue
        if not "delete_customer".startswith(name):
            continue
        if any(tool.startswith(name) for tool in allowed):
            continue
        total += float(probabilities[token_id])
    return total


class _Discard:
    name = "<discard>"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
