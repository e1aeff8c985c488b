"""``guardrail policy``: commands for the people who write policy files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from guardrail.cli.common import EXIT_INPUT, fail, read_json, stderr
from guardrail.errors import GuardrailError

policy_app = typer.Typer(help="Check policy files.", no_args_is_help=True)


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
) -> None:
    """Validate policy files, and lint them against tool schemas if given."""
    from guardrail.errors import PolicyError
    from guardrail.policy.lint import lint_policy
    from guardrail.policy.loader import load_policy
    from guardrail.request import parse_chat_request

    problems: list[PolicyError] = []
    tool_list: list[Any] | None = None
    try:
        if tools is not None:
            body = read_json(tools, "tools")
            if isinstance(body, list):
                body = {"messages": [{"role": "user", "content": ""}], "tools": body}
            tool_list = parse_chat_request(body).tools
    except GuardrailError as err:
        fail(err)

    for file in files:
        try:
            loaded = load_policy(file)
        except PolicyError as err:
            problems.append(err)
            continue
        if tool_list is not None:
            problems.extend(lint_policy(loaded, tool_list))

    for problem in problems:
        stderr.print(
            f"[bold red]error:[/] {escape(str(problem))}", markup=True, soft_wrap=True
        )
    if problems:
        raise typer.Exit(EXIT_INPUT)
    stderr.print(f"{len(files)} policy file(s) valid")
