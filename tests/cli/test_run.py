"""``guardrail run`` as a user runs it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "refund.json"
POLICY = REPO / "policies" / "support-agent.yaml"


def guardrail(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "guardrail", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.model
def test_run_prints_compliant_call(tmp_path):
    audit = tmp_path / "audit.jsonl"
    result = guardrail(
        "run",
        "--policy",
        str(POLICY),
        "--messages",
        str(EXAMPLE),
        "--audit-log",
        str(audit),
    )
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert message["role"] == "assistant"
    call = message["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] in {"search_orders", "refund_order"}
    assert isinstance(json.loads(call["function"]["arguments"]), dict)

    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert events[-1]["event"] == "request_completed"
    assert events[-1]["validation_passed"] is True


def test_malformed_policy_yaml_names_line(tmp_path):
    policy = write(tmp_path / "p.yaml", "policy: x\ntools:\n  a: [unclosed\n")
    result = guardrail("run", "--policy", str(policy), "--messages", str(EXAMPLE))
    assert result.returncode == 2
    assert f"{policy}:" in result.stderr
    assert "invalid YAML" in result.stderr


def test_misspelt_policy_key_suggests_fix(tmp_path):
    policy = write(
        tmp_path / "p.yaml",
        "policy: x\ntools:\n  search_orders:\n    alow: true\n",
    )
    result = guardrail("run", "--policy", str(policy), "--messages", str(EXAMPLE))
    assert result.returncode == 2
    assert f"{policy}:4" in result.stderr
    assert "Did you mean 'allow'?" in result.stderr


def test_unknown_tool_in_policy_suggests_name(tmp_path):
    policy = write(
        tmp_path / "p.yaml",
        "policy: x\ntools:\n  refund_ordr:\n    allow: true\n",
    )
    result = guardrail("run", "--policy", str(policy), "--messages", str(EXAMPLE))
    assert result.returncode == 2
    assert f"{policy}:3" in result.stderr
    assert "Did you mean 'refund_order'?" in result.stderr


def test_unknown_argument_in_policy_suggests_name(tmp_path):
    policy = write(
        tmp_path / "p.yaml",
        "policy: x\ntools:\n  refund_order:\n    allow: true\n"
        "    arguments:\n      amont: {maximum: 5}\n",
    )
    result = guardrail("run", "--policy", str(policy), "--messages", str(EXAMPLE))
    assert result.returncode == 2
    assert f"{policy}:6" in result.stderr
    assert "Did you mean 'amount'?" in result.stderr


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("{uniqueItems: true}", "'uniqueItems' is not supported"),
        ("{maxLength: 3}", "not supported for an argument of type number"),
        ("{frobnicate: 1}", "'frobnicate' is not a known keyword"),
        ("{maximun: 1}", "Did you mean 'maximum'?"),
        ("{maximum: lots}", "maximum must be a number"),
        ("{enum: [-1]}", "is not valid for the tool's own schema"),
    ],
)
def test_unenforceable_constraint_is_rejected(tmp_path, constraint, expected):
    policy = write(
        tmp_path / "p.yaml",
        "policy: x\ntools:\n  refund_order:\n    allow: true\n"
        f"    arguments:\n      amount: {constraint}\n",
    )
    result = guardrail("run", "--policy", str(policy), "--messages", str(EXAMPLE))
    assert result.returncode == 2
    assert f"{policy}:6" in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[]", "expected a JSON object"),
        ('{"messages": []}', "$.messages"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}', "$.messages[0]"),
        ('{"messages": [{"role": "user"}]}', "$.messages[0].content"),
        (
            '{"messages": [{"role": "user", "content": "x"}], '
            '"tools": [{"type": "function", "function": {"name": "bad name"}}]}',
            "$.tools[0].function.name",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], '
            '"tool_choice": {"type": "function", "function": {"name": "nope"}}}',
            "$.tool_choice.function.name",
        ),
        ('{"messages": [', "invalid JSON"),
    ],
)
def test_malformed_messages_are_rejected(tmp_path, body, expected):
    messages = write(tmp_path / "m.json", body)
    result = guardrail("run", "--policy", str(POLICY), "--messages", str(messages))
    assert result.returncode == 2
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe{", "not UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ],
)
def test_unreadable_messages_file_is_input_error(tmp_path, content, expected):
    messages = tmp_path / "m.json"
    messages.write_bytes(content)
    result = guardrail("run", "--policy", str(POLICY), "--messages", str(messages))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_policy_file_is_input_error(tmp_path):
    result = guardrail(
        "run", "--policy", str(tmp_path / "none.yaml"), "--messages", str(EXAMPLE)
    )
    assert result.returncode == 2
    assert "cannot read policy file" in result.stderr


def test_invalid_mode_is_rejected():
    result = guardrail(
        "run", "--policy", str(POLICY), "--messages", str(EXAMPLE), "--mode", "audit"
    )
    assert result.returncode == 2
    assert "--mode must be enforce or shadow" in result.stderr


@pytest.mark.model
def test_run_logs_go_to_stderr(tmp_path):
    """A condition that fails to evaluate is logged, and stdout stays pure JSON."""
    policy = write(
        tmp_path / "p.yaml",
        "policy: x\ntools:\n  search_orders:\n    allow: true\n"
        "rules:\n  - id: broken\n    effect: permit\n    tools: [refund_order]\n"
        "    when: \"request.metadata.missing == 'x'\"\n",
    )
    result = guardrail(
        "run",
        "--policy",
        str(policy),
        "--messages",
        str(EXAMPLE),
        "--max-tokens",
        "48",
        "--audit-log",
        str(tmp_path / "a.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["role"] == "assistant"
    assert "condition_failed" in result.stderr


def test_tool_choice_of_denied_tool_is_rejected():
    result = guardrail(
        "run",
        "--policy",
        str(POLICY),
        "--messages",
        str(EXAMPLE),
        "--tool-choice",
        "delete_customer",
    )
    assert result.returncode == 2
    assert "$.tool_choice.function.name" in result.stderr
    assert "does not allow" in result.stderr
