"""The Hermes grammar, driven token by token with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from guardrail.grammar.compiler import GrammarCompiler
from guardrail.grammar.hermes import HermesFormat
from guardrail.policy.evaluate import AllowedActions, AllowedTool

REFUND = AllowedTool(
    name="refund_order",
    parameters={
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "number", "minimum": 0, "maximum": 100},
            "note": {"type": "string"},
        },
        "required": ["order_id", "amount"],
        "additionalProperties": False,
    },
)
SEARCH = AllowedTool(
    name="search_orders",
    parameters={
        "type": "object",
        "properties": {"customer_id": {"type": "string", "pattern": "^C[0-9]{6}$"}},
        "required": ["customer_id"],
        "additionalProperties": False,
    },
)


@pytest.fixture(scope="module")
def compiler(hf_tokenizer) -> GrammarCompiler:
    return GrammarCompiler(hf_tokenizer, HermesFormat())


def matcher_for(compiler, mode="auto", tools=(REFUND, SEARCH), parallel=True):
    actions = AllowedActions(mode=mode, tools=tuple(tools), parallel_calls=parallel)
    return compiler.new_matcher(compiler.compile(actions, "test"))


def feed(compiler, matcher, text: str) -> bool:
    tokens = compiler.tokenizer.tokenize_str(text)
    return matcher.consume_tokens(tokens)


def allowed_ids(compiler, matcher) -> set[int]:
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    bitmask = allocate_token_bitmask(1, compiler.vocab_size)
    fill_next_token_bitmask(matcher, bitmask, 0)
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    row = bits.bool().flatten(1)[0, : compiler.vocab_size]
    return set(row.nonzero().flatten().tolist())


def call_text(name: str, arguments: dict) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def test_auto_mode_accepts_plain_text(compiler):
    matcher = matcher_for(compiler)
    assert feed(compiler, matcher, "I can help with that order.")
    assert matcher.is_accepting()


def test_auto_mode_accepts_text_then_call(compiler):
    matcher = matcher_for(compiler)
    text = "Let me look. " + call_text("search_orders", {"customer_id": "C123456"})
    assert feed(compiler, matcher, text)
    assert matcher.is_accepting()


def test_denied_tool_name_is_rejected(compiler):
    matcher = matcher_for(compiler, tools=(SEARCH,))
    assert not feed(compiler, matcher, '<tool_call>{"name": "refund_order"')


def test_invented_tool_name_is_rejected(compiler):
    matcher = matcher_for(compiler)
    assert not feed(compiler, matcher, '<tool_call>{"name": "transfer_funds"')


def test_argument_above_maximum_is_rejected(compiler):
    matcher = matcher_for(compiler)
    prefix = '<tool_call>{"name": "refund_order", "arguments": {"order_id": "A", '
    assert not feed(compiler, matcher, prefix + '"amount": 101')


def test_pattern_argument_is_enforced(compiler):
    good = matcher_for(compiler)
    assert feed(compiler, good, call_text("search_orders", {"customer_id": "C000001"}))
    bad = matcher_for(compiler)
    assert not feed(
        compiler, bad, call_text("search_orders", {"customer_id": "D000001"})
    )


def test_unknown_argument_is_rejected(compiler):
    matcher = matcher_for(compiler)
    prefix = '<tool_call>{"name": "search_orders", "arguments": {"customer_id": '
    assert not feed(compiler, matcher, prefix + '"C123456", "admin": true')


def test_none_mode_rejects_call_trigger(compiler):
    matcher = matcher_for(compiler, mode="none")
    assert not feed(compiler, matcher, "Sure. <tool_call>")


def test_near_miss_trigger_stays_text(compiler):
    matcher = matcher_for(compiler, mode="none")
    assert feed(compiler, matcher, "a <tool_calls> tag and <tool_cal")
    assert matcher.is_accepting()


def test_trigger_split_across_tokens(compiler):
    """The trigger is five ordinary tokens in SmolLM2; odd splits must work."""
    pieces = ["Hi", " <", "tool", "_", "call", ">"]
    tokens = [t for piece in pieces for t in compiler.tokenizer.tokenize_str(piece)]
    matcher = matcher_for(compiler, tools=(SEARCH,))
    assert matcher.consume_tokens(tokens)
    assert not matcher.is_accepting()


def test_required_mode_rejects_leading_text(compiler):
    matcher = matcher_for(compiler, mode="required")
    assert not feed(compiler, matcher, "Sure")


def test_required_mode_blocks_eos_until_call_completes(compiler):
    matcher = matcher_for(compiler, mode="required")
    eos = compiler.eos_token_id
    assert eos not in allowed_ids(compiler, matcher)
    assert feed(compiler, matcher, '<tool_call>{"name": "search_orders"')
    assert eos not in allowed_ids(compiler, matcher)


def test_only_eos_after_single_call(compiler):
    matcher = matcher_for(compiler, mode="required", parallel=False)
    assert feed(
        compiler, matcher, call_text("search_orders", {"customer_id": "C123456"})
    )
    allowed = allowed_ids(compiler, matcher)
    eos = compiler.eos_token_id
    assert eos in allowed
    others = allowed - {eos}
    assert all(compiler.tokenizer.decode_str([t]).strip() == "" for t in others)


def test_no_second_call_without_parallel(compiler):
    matcher = matcher_for(compiler, mode="required", parallel=False)
    first = call_text("search_orders", {"customer_id": "C123456"})
    assert not feed(compiler, matcher, first + "\n<tool_call>")


def test_parallel_calls_are_bounded(compiler):
    matcher = matcher_for(compiler, mode="required")
    one = call_text("search_orders", {"customer_id": "C123456"})
    assert feed(compiler, matcher, "\n".join([one] * 8))
    assert not feed(compiler, matcher, "\n<tool_call>")


def test_whitespace_inside_json_is_bounded(compiler):
    matcher = matcher_for(compiler, mode="required")
    assert not feed(compiler, matcher, '<tool_call>{"name":   "search_orders"')


def test_whitespace_around_tags_is_bounded(compiler):
    matcher = matcher_for(compiler, mode="required")
    assert not feed(compiler, matcher, "<tool_call>\n\n\n{")


def test_nothing_allowed_permits_only_eos(compiler):
    matcher = matcher_for(compiler, mode="required", tools=())
    assert allowed_ids(compiler, matcher) == {compiler.eos_token_id}


@pytest.mark.parametrize(
    "note",
    [
        "braces {like} [these]",
        'a "quoted" word and a backslash \\ here',
        "the end tag </tool_call> inside the text",
        "non-ASCII: café, 東京, emoji 🚀",
        "newline\nand tab\t",
    ],
)
def test_arguments_survive_round_trip(compiler, note):
    matcher = matcher_for(compiler, mode="required")
    arguments = {"order_id": "O-1", "amount": 12.5, "note": note}
    text = call_text("refund_order", arguments)
    assert feed(compiler, matcher, text)
    assert matcher.is_accepting()

    parsed = HermesFormat().parse_output(text)
    assert parsed.error is None
    assert parsed.calls[0].arguments == arguments


def test_parse_output_reports_truncated_call():
    parsed = HermesFormat().parse_output('<tool_call>{"name": "x", "argu')
    assert parsed.error is not None
    assert parsed.calls == ()


def test_parse_output_keeps_leading_text():
    text = "Checking now. " + call_text("search_orders", {"customer_id": "C123456"})
    parsed = HermesFormat().parse_output(text)
    assert parsed.content == "Checking now."
    assert [call.name for call in parsed.calls] == ["search_orders"]


def test_compiler_caches_by_allowed_set(compiler):
    actions = AllowedActions(mode="auto", tools=(SEARCH,))
    first = compiler.compile(actions, "sha-a")
    hits = compiler.hits
    again = compiler.compile(AllowedActions(mode="auto", tools=(SEARCH,)), "sha-a")
    assert again is first
    assert compiler.hits == hits + 1
    other = compiler.compile(actions, "sha-b")
    assert other is not first


@pytest.fixture(scope="module")
def special_compiler(model_dir) -> GrammarCompiler:
    """The SmolLM2 tokenizer with both call markers added as special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<tool_call>", "</tool_call>"]}
    )
    return GrammarCompiler(tokenizer, HermesFormat(), vocab_size=len(tokenizer))


def special_ids(compiler):
    return [
        compiler.tokenizer.tokenize_str(marker)
        for marker in ("<tool_call>", "</tool_call>")
    ]


def test_special_markers_are_detected(special_compiler, compiler):
    assert special_compiler.special_markers == {"<tool_call>", "</tool_call>"}
    assert compiler.special_markers == frozenset()


def test_special_marker_call_is_accepted(special_compiler):
    start, end = special_ids(special_compiler)
    assert len(start) == len(end) == 1
    body = '{"name": "search_orders", "arguments": {"customer_id": "C123456"}}'
    tokens = (
        special_compiler.tokenizer.tokenize_str("Checking. ")
        + start
        + special_compiler.tokenizer.tokenize_str(body)
        + end
    )
    matcher = matcher_for(special_compiler)
    assert matcher.consume_tokens(tokens)
    assert matcher.is_accepting()


def test_special_marker_text_spelling_is_not_a_call(special_compiler):
    """With a special start token, the same letters typed as text stay text."""
    matcher = matcher_for(special_compiler, mode="required")
    spelled = [
        t
        for piece in ["<", "tool", "_", "call", ">"]
        for t in special_compiler.tokenizer.tokenize_str(piece)
    ]
    assert not matcher.consume_tokens(spelled)


def test_special_marker_none_mode_blocks_token(special_compiler):
    start, _ = special_ids(special_compiler)
    matcher = matcher_for(special_compiler, mode="none")
    assert start[0] not in allowed_ids(special_compiler, matcher)
