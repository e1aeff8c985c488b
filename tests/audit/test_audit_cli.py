"""``guardrail audit`` as a user runs it: a subprocess on the generated log."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from baits import STRICT_SUPPORT_POLICY, policy_file

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.model


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrail", "audit", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def summary_json(*args: str) -> dict:
    result = audit("summary", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_summary_table_names_groups(generated_log):
    result = audit("summary", str(generated_log))

    assert result.returncode == 0, result.stderr
    for name in ("bait-support", "bait-banking", "s-inject", "delete_customer"):
        assert name in result.stdout, name


def test_summary_json_counts(generated_log):
    data = summary_json(str(generated_log))

    assert data["overall"]["requests"] == 5
    assert data["read"]["invalid_lines"] == 0
    assert data["read"]["events"]["request_completed"] == 5


def test_summary_reads_gzip_and_several_logs(generated_log, tmp_path):
    packed = tmp_path / "copy.jsonl.gz"
    packed.write_bytes(gzip.compress(generated_log.read_bytes()))

    data = summary_json(str(generated_log), str(packed))

    assert data["overall"]["requests"] == 10


def test_summary_truncated_last_line_warns(generated_log, tmp_path):
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(generated_log.read_bytes() + b'{"event": "decode_step", "st')

    result = audit("summary", str(cut))

    assert result.returncode == 0
    assert "warning:" in result.stderr
    assert f"{cut}:" in result.stderr.replace("\n", "")


def test_summary_invalid_line_exits_2(generated_log, tmp_path):
    lines = generated_log.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")

    result = audit("summary", str(broken), "--json")

    assert result.returncode == 2
    assert json.loads(result.stdout)["overall"]["requests"] == 5
    assert f"{broken}:2: invalid JSON" in result.stderr.replace("\n", "")


@pytest.mark.parametrize(
    ("option", "value", "requests"),
    [
        ("--session", "s-refund", 2),
        ("--policy", "bait-banking", 1),
        ("--tool", "transfer_funds", 1),
        ("--since", "2100-01-01", 0),
        ("--until", "2000-01-01", 0),
    ],
)
def test_summary_filters(generated_log, option, value, requests):
    data = summary_json(str(generated_log), option, value)

    assert data["overall"]["requests"] == requests


def test_summary_bad_time_exits_2(generated_log):
    result = audit("summary", str(generated_log), "--since", "last week")

    assert result.returncode == 2
    assert "--since: invalid time 'last week'" in result.stderr


def test_summary_missing_log_exits_2(tmp_path):
    result = audit("summary", str(tmp_path / "none.jsonl"))

    assert result.returncode == 2
    assert "not found" in result.stderr


def test_show_session_tells_story(generated_log):
    result = audit("show", str(generated_log), "--session", "s-inject")

    assert result.returncode == 0, result.stderr
    assert "amount: maximum 500" in result.stdout
    assert "tools.transfer_funds.arguments.amount.maximum" in result.stdout
    assert "ALERT" in result.stdout
    assert "SYSTEM NOTICE" in result.stdout


def test_show_request_json_is_its_events(generated_log):
    result = audit("show", str(generated_log), "--request", "req-3", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]

    assert result.returncode == 0, result.stderr
    assert {event["request_id"] for event in events} == {"req-3"}
    assert events[-1]["event"] == "request_completed"


def test_show_needs_one_id(generated_log):
    result = audit("show", str(generated_log))

    assert result.returncode == 2
    assert "exactly one of --session ID and --request ID" in result.stderr


def test_show_unknown_session_exits_2(generated_log):
    result = audit("show", str(generated_log), "--session", "s-none")

    assert result.returncode == 2
    assert "no events of session s-none" in result.stderr


def test_report_writes_self_contained_page(generated_log, tmp_path):
    output = tmp_path / "report.html"

    result = audit("report", str(generated_log), "-o", str(output))
    page = output.read_text()

    assert result.returncode == 0, result.stderr
    assert page.count("<svg") >= 6
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert "default-src 'none'" in page


def test_replay_shows_difference(generated_log, tmp_path):
    strict = policy_file(tmp_path, "strict", STRICT_SUPPORT_POLICY)

    result = audit("replay", "--policy", str(strict), str(generated_log))
    data = json.loads(
        audit("replay", "--policy", str(strict), str(generated_log), "--json").stdout
    )

    assert result.returncode == 0, result.stderr
    assert "BLOCKED refund_order" in result.stdout
    assert data["calls_now_blocked"] >= 2
    assert {r["request_id"] for r in data["requests"]} >= {"req-2", "req-3"}


def test_replay_invalid_policy_exits_2(generated_log, tmp_path):
    bad = policy_file(tmp_path, "bad", "policy: x\ntools: {a: {allow: maybe}}\n")

    result = audit("replay", "--policy", str(bad), str(generated_log))

    assert result.returncode == 2
    assert f"{bad}:2" in result.stderr


def test_summary_progress_forced_on(generated_log):
    result = audit("summary", str(generated_log), "--progress", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overall"]["requests"] == 5


def test_report_unwritable_output_exits_2(generated_log, tmp_path):
    output = tmp_path / "missing" / "report.html"

    result = audit("report", str(generated_log), "-o", str(output))

    assert result.returncode == 2
    assert "cannot write the report to" in result.stderr
