"""Tool names against the real default tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrail.policy.tokens import load_tokenizer, token_findings, tokenize_names

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return load_tokenizer(model_dir)


def test_tool_names_round_trip(tokenizer) -> None:
    names = tokenize_names(tokenizer, ["search_orders", "refund_order"])

    assert [item.exact for item in names] == [True, True]
    assert "".join(names[0].tokens) == "search_orders"


def test_prefix_names_are_reported(tokenizer) -> None:
    findings = token_findings(tokenizer, ["send", "send_email"])

    assert findings == [
        (
            "warning",
            "tool name 'send' is a prefix of 'send_email': until the closing quote "
            "the grammar cannot tell which one the model is writing",
        )
    ]


def test_shared_first_tokens_are_reported(tokenizer) -> None:
    findings = token_findings(tokenizer, ["refund_order", "refund_all"])

    assert len(findings) == 1
    assert "share their first token(s)" in findings[0][1]


def test_distinct_names_give_no_finding(tokenizer) -> None:
    assert token_findings(tokenizer, ["search_orders", "delete_customer"]) == []


def test_missing_tokenizer_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)
