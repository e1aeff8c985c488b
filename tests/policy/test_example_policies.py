"""The example policies load, lint clean against their tools, and pass their tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrail.policy.lint import lint_policy
from guardrail.policy.loader import load_policy
from guardrail.policy.testing import run_policy_tests
from guardrail.request import parse_chat_request

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "support-agent": "refund.json",
    "banking-assistant": "close-account.json",
    "customer-support": "customer-support.json",
    "coding-agent": "coding-agent.json",
    "email-assistant": "email-assistant.json",
    "data-analyst": "data-analyst.json",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_policy_lints_clean(name: str) -> None:
    policy = load_policy(REPO / "policies" / f"{name}.yaml")
    body = json.loads((REPO / "examples" / EXAMPLES[name]).read_text())

    assert lint_policy(policy, parse_chat_request(body).tools) == []


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_policy_tests_pass(name: str) -> None:
    report = run_policy_tests(REPO / "policies" / "tests" / f"{name}.yaml")

    assert [(r.name, r.differences) for r in report.failed] == []
    assert len(report.results) >= 5


def test_every_policy_has_a_test_file() -> None:
    policies = {path.stem for path in (REPO / "policies").glob("*.yaml")}
    tests = {path.stem for path in (REPO / "policies" / "tests").glob("*.yaml")}

    assert policies <= tests


def test_failing_case_reports_a_diff(tmp_path: Path) -> None:
    test_file = tmp_path / "t.yaml"
    test_file.write_text(
        f"policy: {REPO / 'policies' / 'customer-support.yaml'}\n"
        f"tools: {REPO / 'examples' / 'customer-support.json'}\n"
        "tests:\n"
        "  - name: wrong on purpose\n"
        "    expect: {allowed: [search_orders, refund_order]}\n"
    )

    report = run_policy_tests(test_file)

    assert report.passed is False
    differences = report.failed[0].differences
    assert differences[0] == "allowed tools differ (- expected, + actual):"
    assert differences[1].startswith("  - refund_order: blocked, phase refund-after")
    assert differences[2].startswith("  + lookup_order: allowed")
    assert report.failed[0].line == 4
