"""``guardrail policy check | test | explain`` as a user runs them: a
subprocess, real files, exit codes and the printed file:line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
EXAMPLES = REPO / "examples"


def guardrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail", "policy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def test_check_passes_the_examples() -> None:
    result = guardrail(
        "check",
        str(POLICIES / "customer-support.yaml"),
        "--tools",
        str(EXAMPLES / "customer-support.json"),
    )

    assert result.returncode == 0, result.stderr
    assert "0 error(s), 0 warning(s)" in result.stderr


def test_check_reports_every_problem_with_lines(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "policy: bad\n"
        "tools:\n"
        "  refund_ordr: {allow: true}\n"
        "rules:\n"
        "  - {id: a, effect: permit, tools: [search_orders], when: 'cals.size() > 0'}\n"
        "  - {id: b, effect: permit, tools: [search_orders], when: 'step >'}\n"
    )

    result = guardrail("check", str(policy))

    assert result.returncode == 2
    assert f"{policy}:5: error:" in result.stderr
    assert "Did you mean 'calls'" in result.stderr
    assert f"{policy}:6: error:" in result.stderr
    assert "invalid CEL" in result.stderr


def test_check_lints_against_tools(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("policy: p\ntools:\n  refund_ordr: {allow: true}\n")

    result = guardrail(
        "check", str(policy), "--tools", str(EXAMPLES / "customer-support.json")
    )

    assert result.returncode == 2
    assert f"{policy}:3: error: unknown tool 'refund_ordr'" in result.stderr
    assert "Did you mean 'refund_order'" in result.stderr


def test_check_strict_fails_on_warnings(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policy: p\nrules:\n  - {id: r, effect: permit, tools: [a], when: 'false'}\n"
    )

    plain = guardrail("check", str(policy))
    strict = guardrail("check", "--strict", str(policy))

    assert plain.returncode == 0
    assert "warning: rule r never fires" in plain.stderr
    assert strict.returncode == 2


@pytest.mark.model
def test_check_with_tokenizer_reports_prefix_names(tmp_path: Path, model_dir) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policy: p\ntools:\n  send: {allow: true}\n  send_email: {allow: true}\n"
    )

    result = guardrail("check", str(policy), "--tokenizer", str(model_dir))

    assert result.returncode == 0, result.stderr
    assert "tool name 'send' is a prefix of 'send_email'" in result.stderr


def test_test_command_passes_the_examples() -> None:
    result = guardrail("test", *map(str, sorted((POLICIES / "tests").glob("*.yaml"))))

    assert result.returncode == 0, result.stderr
    assert " 0 failed" in result.stderr


def test_test_command_fails_with_a_diff(tmp_path: Path) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text(
        f"policy: {POLICIES / 'support-agent.yaml'}\n"
        f"tools: {EXAMPLES / 'refund.json'}\n"
        "tests:\n"
        "  - name: deletes are allowed (wrong on purpose)\n"
        "    expect: {allowed: [search_orders, refund_order, delete_customer]}\n"
    )

    result = guardrail("test", str(tests))

    assert result.returncode == 1
    assert f"FAIL {tests}:4 deletes are allowed" in result.stderr
    assert "- delete_customer: blocked, forbidden" in result.stderr
    assert "0 passed, 1 failed" in result.stderr


def test_test_command_rejects_an_invalid_file(tmp_path: Path) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text("policy: x.yaml\ntools: []\ntests: []\n")

    result = guardrail("test", str(tests))

    assert result.returncode == 2
    assert "invalid test file at tests" in result.stderr


def test_explain_prints_every_tool_and_rule() -> None:
    result = guardrail(
        "explain",
        "--policy",
        str(POLICIES / "coding-agent.yaml"),
        "--messages",
        str(EXAMPLES / "coding-agent.json"),
    )

    assert result.returncode == 0, result.stderr
    for tool in ("read_file", "write_file", "run_shell", "web_fetch", "git_push"):
        assert tool in result.stdout
    assert "read-only-shell-after-web-content" in result.stdout
    assert "tainted" in result.stdout


def test_explain_json() -> None:
    result = guardrail(
        "explain",
        "--policy",
        str(POLICIES / "email-assistant.yaml"),
        "--messages",
        str(EXAMPLES / "email-assistant.json"),
        "--json",
    )

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    decisions = {tool["tool"]: tool for tool in payload["tools"]}
    assert payload["tainted"] is True
    assert decisions["send_email"]["allowed"] is True
    assert decisions["send_email"]["rule"] == "send-inside-own-domain-after-untrusted"
    assert decisions["delete_email"]["allowed"] is False
    assert decisions["delete_email"]["rule"] == "baseline.no-destructive-tools"
    pattern = json.dumps(decisions["send_email"]["parameters"])
    assert "example\\\\.com" in pattern


def test_explain_rejects_a_bad_header() -> None:
    result = guardrail(
        "explain",
        "--policy",
        str(POLICIES / "email-assistant.yaml"),
        "--messages",
        str(EXAMPLES / "email-assistant.json"),
        "--header",
        "no-equals-sign",
    )

    assert result.returncode == 2
    assert "write NAME=VALUE" in result.stderr


def test_explain_json_stays_valid_when_a_condition_fails(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policy: p\nrules:\n"
        "  - {id: broken, effect: permit, tools: [lookup_order], "
        "when: 'counts.nope > 0'}\n"
    )

    result = guardrail(
        "explain",
        "--policy",
        str(policy),
        "--messages",
        str(EXAMPLES / "customer-support.json"),
        "--json",
    )

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    decision = next(t for t in payload["tools"] if t["tool"] == "lookup_order")
    assert decision["allowed"] is False
    assert "condition_failed" in result.stderr


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ('customer_id: {pattern: "(?<=x)a"}', "look-behind"),
        ("customer_id: {minLength: 10, maxLength: 2}", "cannot enforce"),
    ],
)
def test_check_compiles_narrowed_schemas(
    tmp_path: Path, constraint: str, expected: str
) -> None:
    """What only the grammar engine rejects is found before rollout."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policy: p\ntools:\n  search_orders:\n    allow: true\n"
        f"    arguments:\n      {constraint}\n"
    )
    result = guardrail("check", str(policy), "--tools", str(EXAMPLES / "refund.json"))
    assert result.returncode == 2
    assert expected in result.stderr
