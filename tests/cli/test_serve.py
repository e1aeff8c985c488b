"""``guardrail serve``: configuration errors end with exit code 2."""

from __future__ import annotations

from typer.testing import CliRunner

from guardrail.cli.main import app

runner = CliRunner()


def test_serve_needs_an_engine(tmp_path, policies_dir):
    result = runner.invoke(
        app, ["serve", "--policy-dir", str(policies_dir)], env={"COLUMNS": "200"}
    )

    assert result.exit_code == 2
    assert "no engine configured" in result.output


def test_serve_rejects_bad_upstream(policies_dir):
    result = runner.invoke(
        app,
        ["serve", "--policy-dir", str(policies_dir), "--upstream", "localhost:8000"],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 2
    assert "not an http(s) URL" in result.output


def test_serve_rejects_missing_policy_dir(tmp_path):
    result = runner.invoke(
        app,
        [
            "serve",
            "--policy-dir",
            str(tmp_path / "absent"),
            "--upstream",
            "http://127.0.0.1:1/v1",
        ],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 2
    assert "policy folder not found" in result.output
