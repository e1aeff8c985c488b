"""``guardrail policy``: commands for the people who write policy files.

``check`` lints files, ``test`` runs their YAML unit tests and ``explain``
shows, for the next step of a conversation, which tool each rule allows or
blocks. Exit codes: 0 success, 1 a policy test failed, 2 invalid input (an
invalid policy or test file, or lint errors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from guardrail.cli.common import EXIT_INPUT, EXIT_INTERNAL, fail, read_json, stderr
from guardrail.errors import GuardrailError

if TYPE_CHECKING:
    from guardrail.policy.lint import Finding
    from guardrail.policy.model import Policy
    from guardrail.request import Tool

policy_app = typer.Typer(
    help="Check, test and explain policy files.", no_args_is_help=True
)

EXIT_TEST_FAILED = EXIT_INTERNAL

_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


@policy_app.command("check")
def policy_check(
    files: Annotated[list[Path], typer.Argument(help="Policy YAML files.")],
    tools: Annotated[
        Path | None,
        typer.Option(
            help="JSON file with an OpenAI 'tools' list (or a request "
            "body with 'tools') to lint the policies against."
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            "--model",
            help="Model folder or tokenizer.json to check tool names against; "
            "'default' for the prepared default model.",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Exit with status 2 on warnings too.")
    ] = False,
) -> None:
    """Report every problem of the policy files, with file:line."""
    _log_to_stderr()
    from guardrail.policy.lint import Finding, review_policy
    from guardrail.policy.loader import check_policy_file

    tool_list: list[Tool] | None = None
    try:
        if tools is not None:
            tool_list = _read_tools(tools)
    except GuardrailError as err:
        fail(err)

    findings: list[Finding] = []
    names: set[str] = set()
    for file in files:
        policy, problems = check_policy_file(file)
        findings.extend(Finding.from_error(problem) for problem in problems)
        if policy is None:
            continue
        findings.extend(review_policy(policy, tool_list))
        names.update(_tool_names(policy, tool_list))

    if tokenizer is not None:
        findings.extend(_token_findings(tokenizer, sorted(names), files))

    for finding in findings:
        style = _STYLE[finding.severity]
        where = finding.source
        if finding.line is not None:
            where = f"{finding.source}:{finding.line}"
        stderr.print(
            f"{escape(where)}: [{style}]{finding.severity}:[/] "
            f"{escape(finding.message)}",
            markup=True,
            soft_wrap=True,
        )

    errors = sum(1 for f in findings if f.severity == "error")
    warnings = sum(1 for f in findings if f.severity == "warning")
    notes = len(findings) - errors - warnings
    stderr.print(
        f"{len(files)} policy file(s): {errors} error(s), {warnings} warning(s), "
        f"{notes} note(s)"
    )
    if errors or (strict and warnings):
        raise typer.Exit(EXIT_INPUT)


@policy_app.command("test")
def policy_test(
    files: Annotated[list[Path], typer.Argument(help="Policy test YAML files.")],
) -> None:
    """Run policy unit tests; exit 1 when a case fails."""
    _log_to_stderr()
    from guardrail.policy.testing import run_policy_tests

    failed = passed = 0
    for file in files:
        try:
            report = run_policy_tests(file)
        except GuardrailError as err:
            fail(err)
        for result in report.results:
            where = f"{report.source}:{result.line}" if result.line else report.source
            if result.passed:
                passed += 1
                stderr.print(
                    f"[green]PASS[/] {escape(where)} {escape(result.name)}",
                    markup=True,
                )
                continue
            failed += 1
            stderr.print(
                f"[bold red]FAIL[/] {escape(where)} {escape(result.name)}",
                markup=True,
            )
            for line in result.differences:
                stderr.print(f"    {escape(line)}", markup=True, soft_wrap=True)

    stderr.print(f"{passed} passed, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_TEST_FAILED)


@policy_app.command("explain")
def policy_explain(
    policy: Annotated[Path, typer.Option(help="Policy YAML file.")],
    messages: Annotated[
        Path,
        typer.Option(help="Chat-completions request body (JSON) with the history."),
    ],
    header: Annotated[
        list[str] | None,
        typer.Option(
            help="Request header NAME=VALUE that conditions read as "
            "request.headers (repeatable), e.g. x-guardrail-user=alice@example.com."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the decisions as JSON on stdout.")
    ] = False,
) -> None:
    """Show, for the next step, every tool allowed or blocked and the deciding rule."""
    _log_to_stderr()
    from guardrail.policy.evaluate import evaluate_policy
    from guardrail.policy.loader import load_policy
    from guardrail.request import parse_chat_request
    from guardrail.session import session_from_request

    try:
        loaded = load_policy(policy)
        request = parse_chat_request(read_json(messages, "messages"))
        headers = _parse_headers(header or [])
        session = session_from_request(request, headers=headers)
        actions = evaluate_policy(loaded, request, session)
    except GuardrailError as err:
        fail(err)

    if as_json:
        payload = {
            "policy": loaded.name,
            "policy_sha256": loaded.sha256,
            "mode": loaded.mode,
            "tool_choice": actions.mode,
            "parallel_calls": actions.parallel_calls,
            "step": session.step,
            "tainted": actions.tainted,
            "tools": [
                {
                    "tool": d.tool,
                    "allowed": d.allowed,
                    "rule": d.rule,
                    "reason": d.reason,
                    "source": d.source,
                    "line": d.line,
                    "shadow_allowed": d.shadow_allowed,
                    "shadow_rule": d.shadow_rule,
                    "parameters": (
                        actions.tool(d.tool).parameters  # type: ignore[union-attr]
                        if actions.tool(d.tool) is not None
                        else None
                    ),
                }
                for d in actions.decisions
            ],
        }
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        return

    _print_table(loaded, actions, session.step)


def _log_to_stderr() -> None:
    """Send policy log events (``condition_failed``) to stderr, not stdout.

    structlog prints to stdout until configured, which would mix its lines
    into the table or the JSON that ``explain`` prints there.
    """
    import structlog

    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def _print_table(policy: Policy, actions: Any, step: int) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{policy.name} ({policy.sha256[:12]}, {policy.mode}) - next step "
        f"{step + 1}, tool_choice {actions.mode}, "
        f"{'tainted' if actions.tainted else 'not tainted'}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("tool", no_wrap=True)
    table.add_column("decision", no_wrap=True)
    table.add_column("rule (file:line)", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    shadow = any(d.shadow_allowed is not None for d in actions.decisions)
    if shadow:
        table.add_column("if shadow rules were enforced")
    for d in actions.decisions:
        decision = "[green]allowed[/]" if d.allowed else "[red]blocked[/]"
        rule = escape(d.rule or "")
        if d.source and d.line:
            rule += f"\n[dim]{escape(d.source)}:{d.line}[/]"
        row = [escape(d.tool), decision, rule, escape(d.reason)]
        if shadow:
            row.append(
                ""
                if d.shadow_allowed is None
                else f"{'allowed' if d.shadow_allowed else 'blocked'} by "
                f"{escape(d.shadow_rule or '')}"
            )
        table.add_row(*row)
    Console(soft_wrap=False).print(table)


def _read_tools(path: Path) -> list[Tool]:
    from guardrail.request import parse_chat_request

    body = read_json(path, "tools")
    if isinstance(body, list):
        body = {"messages": [{"role": "user", "content": ""}], "tools": body}
    return parse_chat_request(body).tools


def _tool_names(policy: Policy, tools: list[Tool] | None) -> list[str]:
    """Return the names to check: the request's, or else the policy's exact ones."""
    compiled = policy.compiled()
    if tools is not None:
        names = [tool.function.name for tool in tools]
        return [
            name
            for name in names
            if compiled.default == "allow"
            or any(r.effect == "permit" and r.matches(name) for r in compiled.rules)
        ]
    exact: list[str] = []
    for rule in compiled.rules:
        if rule.effect == "permit":
            for selector in rule.selectors:
                exact.extend(selector.exact_names)
    return exact


def _token_findings(tokenizer: str, names: list[str], files: list[Path]) -> list[Any]:
    from guardrail.policy.lint import Finding
    from guardrail.policy.tokens import load_tokenizer, token_findings

    source = str(files[0]) if len(files) == 1 else "tool names"
    if tokenizer == "default":
        from guardrail.models.prepare import default_model_dir

        tokenizer = str(default_model_dir())
    try:
        loaded = load_tokenizer(tokenizer)
    except Exception as err:  # tokenizers raises its own exception types
        return [Finding("error", f"cannot load tokenizer {tokenizer}: {err}", source)]
    return [
        Finding(severity, message, source)  # type: ignore[arg-type]
        for severity, message in token_findings(loaded, names)
    ]


def _parse_headers(values: list[str]) -> dict[str, str]:
    from guardrail.errors import InputError

    headers: dict[str, str] = {}
    for value in values:
        name, separator, content = value.partition("=")
        if not separator or not name.strip():
            raise InputError(f"--header {value!r}: write NAME=VALUE")
        headers[name.strip().lower()] = content
    return headers
