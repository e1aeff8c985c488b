"""Check a policy against the tool schemas it will govern.

Finds what a schema check alone cannot: a tool or argument name the request
does not define (with a did-you-mean hint), a constraint that does not fit
the argument's type, an unsupported keyword, and a narrowing that leaves no
valid value. Each finding is a :class:`PolicyError` with file:line.
"""

from __future__ import annotations

from collections.abc import Sequence

from guardrail.errors import PolicyError
from guardrail.policy.constraints import (
    ConstraintProblem,
    check_constraint,
    narrow_property,
)
from guardrail.policy.loader import suggest
from guardrail.policy.model import Policy
from guardrail.request import Tool

__all__ = ["lint_policy", "raise_for_lint"]


def lint_policy(policy: Policy, tools: Sequence[Tool]) -> list[PolicyError]:
    """Return every problem of ``policy`` against ``tools``, in file order."""
    by_name = {tool.function.name: tool for tool in tools}
    problems: list[PolicyError] = []

    for tool_name, rule in policy.tools.items():
        tool = by_name.get(tool_name)
        if tool is None:
            problems.append(
                PolicyError(
                    f"unknown tool {tool_name!r}: no tool of that name in the "
                    f"request.{suggest(tool_name, list(by_name))} Known tools: "
                    f"{', '.join(by_name) or 'none'}.",
                    source=policy.source,
                    line=policy.line_of("tools", tool_name),
                    rule=tool_name,
                )
            )
            continue

        parameters = tool.function.parameters or {}
        properties = parameters.get("properties", {})
        for argument, constraint in rule.arguments.items():
            where = ("tools", tool_name, "arguments", argument)
            if argument not in properties:
                problems.append(
                    PolicyError(
                        f"unknown argument {argument!r} of tool {tool_name!r}."
                        f"{suggest(argument, list(properties))} Arguments: "
                        f"{', '.join(properties) or 'none'}.",
                        source=policy.source,
                        line=policy.line_of(*where),
                        rule=tool_name,
                    )
                )
                continue

            try:
                check_constraint(constraint, properties[argument])
            except ConstraintProblem as problem:
                keyword = (problem.keyword,) if problem.keyword else ()
                problems.append(
                    PolicyError(
                        f"tools.{tool_name}.arguments.{argument}: {problem}",
                        source=policy.source,
                        line=policy.line_of(*where, *keyword),
                        rule=tool_name,
                    )
                )
                continue

            narrowed = narrow_property(properties[argument], constraint)
            if narrowed.get("enum") == []:
                problems.append(
                    PolicyError(
                        f"tools.{tool_name}.arguments.{argument}: the policy's enum "
                        "shares no value with the tool's enum, so no value is "
                        "valid; fix the list or forbid the tool",
                        source=policy.source,
                        line=policy.line_of(*where, "enum"),
                        rule=tool_name,
                    )
                )

    return problems


def raise_for_lint(policy: Policy, tools: Sequence[Tool]) -> None:
    """Raise the first problem :func:`lint_policy` finds, if any."""
    problems = lint_policy(policy, tools)
    if problems:
        raise problems[0]
