"""The masking core on real grammars and the real tokenizer, with random logits."""

from __future__ import annotations

import math

import pytest
import torch

from guardrail.grammar.compiler import GrammarCompiler
from guardrail.grammar.hermes import HermesFormat
from guardrail.policy.evaluate import AllowedActions, AllowedTool
from guardrail.processors.core import SequenceGuard, TokenMasker

LOOKUP = AllowedTool(
    name="lookup",
    parameters={
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["id"],
        "additionalProperties": False,
    },
)


@pytest.fixture(scope="module")
def compiler(hf_tokenizer) -> GrammarCompiler:
    return GrammarCompiler(hf_tokenizer, HermesFormat())


@pytest.fixture(scope="module")
def masker(compiler) -> TokenMasker:
    return TokenMasker(
        compiler.vocab_size,
        compiler.eos_token_id,
        lambda token: compiler.tokenizer.decode_str([token]),
    )


def new_guard(compiler, mode="required", enforce=True, records=None):
    actions = AllowedActions(mode=mode, tools=(LOOKUP,), parallel_calls=False)
    matcher = compiler.new_matcher(compiler.compile(actions, "core-test"))
    listener = (
        (lambda _guard, record: records.append(record)) if records is not None else None
    )
    return SequenceGuard(matcher=matcher, enforce=enforce, listener=listener)


def feed(compiler, guard, text):
    for token in compiler.tokenizer.tokenize_str(text):
        guard.accept_token(token)


def random_logits(rows, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * 4


def test_blocked_mass_matches_reference(compiler, masker):
    records = []
    guard = new_guard(compiler, records=records)
    logits = random_logits(1, compiler.vocab_size)
    original = logits.clone().double()

    masker.apply(logits, [guard])

    allowed = torch.isfinite(logits[0])
    probabilities = torch.softmax(original[0], dim=-1)
    expected = 1.0 - float(probabilities[allowed].sum())
    assert math.isclose(records[0].blocked_mass, expected, rel_tol=1e-4, abs_tol=1e-6)


def test_enforce_leaves_allowed_logits_unchanged(compiler, masker):
    guard = new_guard(compiler)
    logits = random_logits(1, compiler.vocab_size, seed=1)
    original = logits.clone()

    masker.apply(logits, [guard])

    allowed = torch.isfinite(logits[0])
    assert 0 < int(allowed.sum()) < compiler.vocab_size
    assert torch.equal(logits[0][allowed], original[0][allowed])


def test_top_blocked_are_most_likely_blocked(compiler, masker):
    records = []
    guard = new_guard(compiler, records=records)
    logits = random_logits(1, compiler.vocab_size, seed=2)
    original = logits.clone()

    masker.apply(logits, [guard])

    blocked = ~torch.isfinite(logits[0])
    best = int(torch.where(blocked, original[0], -math.inf).argmax())
    assert records[0].top_blocked[0].token_id == best
    assert records[0].top_blocked[0].text == compiler.tokenizer.decode_str([best])


def test_shadow_mode_masks_nothing(compiler, masker):
    records = []
    guard = new_guard(compiler, enforce=False, records=records)
    logits = random_logits(1, compiler.vocab_size, seed=3)
    original = logits.clone()

    masker.apply(logits, [guard])

    assert torch.equal(logits, original)
    assert records[0].blocked_mass > 0.9


def test_shadow_mode_records_violation_step(compiler, masker):
    guard = new_guard(compiler, enforce=False, records=[])
    masker.apply(random_logits(1, compiler.vocab_size), [guard])
    feed(compiler, guard, "Hello")

    assert guard.violation_step == 0
    assert not guard.active


def test_stopped_matcher_still_masks(compiler, masker):
    """A matcher that has stopped must never leave its row unmasked."""
    guard = new_guard(compiler)
    feed(
        compiler,
        guard,
        '<tool_call>{"name": "lookup", "arguments": {"id": 3}}</tool_call>',
    )
    feed(compiler, guard, "\n\n")
    assert guard.matcher.is_stopped()

    logits = random_logits(1, compiler.vocab_size, seed=6)
    masker.apply(logits, [guard])

    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [
        compiler.eos_token_id
    ]


def test_matcher_error_forces_eos(compiler, masker):
    records = []
    guard = new_guard(compiler, records=records)
    feed(compiler, guard, "not a call")
    assert guard.error is not None

    logits = random_logits(1, compiler.vocab_size, seed=7)
    masker.apply(logits, [guard])

    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [
        compiler.eos_token_id
    ]
    assert records[-1].forced_eos


def test_unguarded_rows_untouched(compiler, masker):
    guard = new_guard(compiler)
    logits = random_logits(3, compiler.vocab_size, seed=8)
    original = logits.clone()

    masker.apply(logits, [None, guard, None])

    assert torch.equal(logits[0], original[0])
    assert torch.equal(logits[2], original[2])
    assert not torch.isfinite(logits[1]).all()


def test_engine_masked_logits_are_handled(compiler, masker):
    """Logits the engine already set to -inf count as zero probability."""
    records = []
    guard = new_guard(compiler, records=records)
    logits = random_logits(1, compiler.vocab_size, seed=9)
    logits[0, 1000:] = -math.inf

    masker.apply(logits, [guard])

    assert 0.0 <= records[0].blocked_mass <= 1.0
    assert torch.isfinite(logits[0]).any()


def test_no_row_is_all_negative_infinity(compiler, masker):
    guards = [new_guard(compiler) for _ in range(4)]
    feed(compiler, guards[1], "broken")
    feed(compiler, guards[2], '<tool_call>{"name": "lookup", "arguments": {"id": 1}}')
    logits = random_logits(4, compiler.vocab_size, seed=10)

    masker.apply(logits, guards)

    for row in range(4):
        assert torch.isfinite(logits[row]).any(), f"row {row} is all -inf"
