"""Check a policy against the tool schemas it will govern.

Finds what a schema check alone cannot. These are tool or argument names
the request does not define (with a did-you-mean hint), constraints that do
not fit the argument's type, unsupported keywords, allow-lists on arguments
that are not strings, and narrowings that leave no valid value. Each finding
is a :class:`PolicyError` with file:line. The guard raises the first,
because such a policy cannot be enforced as written.

:func:`review_policy` adds what ``guardrail policy check`` reports as
warnings: rules that can never fire or always fire, where that can be seen
without a session, and flags that have no effect.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guardrail.errors import PolicyError
from guardrail.policy.compiled import CompiledPolicy, CompiledRule, ToolSelector
from guardrail.policy.conditions import Condition, ConditionError
from guardrail.policy.constraints import (
    ConstraintProblem,
    check_constraint,
    narrow_property,
)
from guardrail.policy.loader import suggest
from guardrail.policy.model import Policy
from guardrail.request import Tool

__all__ = ["Finding", "lint_policy", "raise_for_lint", "review_policy"]

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    """One result of ``guardrail policy check``, printed as file:line: text."""

    severity: Severity
    message: str
    source: str
    line: int | None = None
    rule: str | None = None

    @classmethod
    def from_error(cls, error: PolicyError) -> Finding:
        return cls("error", error.message, error.source, error.line, error.rule)

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


def lint_policy(
    policy: Policy, tools: Sequence[Tool], *, strict: bool = True
) -> list[PolicyError]:
    """Return every problem of ``policy`` against ``tools``, in file order.

    ``strict`` False is for serving: a request may carry a subset of the
    tools a policy names, so a named tool it lacks is reported only when a
    request tool's name is close to it (a likely typo that disables a rule).
    """
    linter = _Linter(policy, tools, strict=strict)
    linter.run()
    return linter.problems


def raise_for_lint(
    policy: Policy, tools: Sequence[Tool], *, strict: bool = True
) -> None:
    """Raise the first problem :func:`lint_policy` finds, if any."""
    problems = lint_policy(policy, tools, strict=strict)
    if problems:
        raise problems[0]


def review_policy(policy: Policy, tools: Sequence[Tool] | None = None) -> list[Finding]:
    """Return lint errors (with ``tools``) and warnings about rules that cannot fire."""
    findings: list[Finding] = []
    if tools is not None:
        findings.extend(Finding.from_error(e) for e in lint_policy(policy, tools))
        if not findings:
            findings.extend(_grammar_findings(policy, tools))
    findings.extend(_warnings(policy, tools))
    return findings


def _grammar_findings(policy: Policy, tools: Sequence[Tool]) -> list[Finding]:
    """Compile each tool's narrowed schema as serving would, for the first step.

    Finds what only the grammar engine rejects: a pattern its regex syntax
    rejects (look-behind), or bounds that leave no valid value.
    """
    from guardrail.errors import RequestError
    from guardrail.grammar.compiler import check_tool_schemas
    from guardrail.policy.evaluate import evaluate_policy
    from guardrail.request import ChatRequest, UserMessage
    from guardrail.session import session_from_request

    request = ChatRequest(
        messages=[UserMessage(role="user", content="")], tools=list(tools)
    )
    actions = evaluate_policy(policy, request, session_from_request(request))
    try:
        check_tool_schemas(request, actions, policy)
    except PolicyError as err:
        return [Finding.from_error(err)]
    except RequestError as err:
        return [Finding("error", str(err), "--tools")]
    return []


class _Linter:
    def __init__(
        self, policy: Policy, tools: Sequence[Tool], *, strict: bool = True
    ) -> None:
        self.policy = policy
        self.strict = strict
        self.compiled = policy.compiled()
        self.by_name = {tool.function.name: tool for tool in tools}
        self.documents = {doc.source: doc for doc in (policy, *policy.fragments)}
        self.problems: list[PolicyError] = []

    def line(self, source: str, *path: str) -> int | None:
        document = self.documents.get(source)
        return document.line_of(*path) if document is not None else None

    def add(self, message: str, source: str, *path: str, rule: str | None) -> None:
        self.problems.append(
            PolicyError(
                message, source=source, line=self.line(source, *path), rule=rule
            )
        )

    def run(self) -> None:
        for rule in self.compiled.rules:
            self.check_names(rule.selectors, rule.source, rule.path, rule.id)
            if rule.effect == "permit":
                for tool in self.matched(rule.selectors):
                    self.check_arguments(rule, tool)
        for budget in self.compiled.budgets:
            self.check_names(budget.selectors, budget.source, budget.path, budget.id)
        for phase in self.compiled.phases:
            self.check_names(phase.selectors, phase.source, phase.path, phase.id)
            self.check_names(
                (phase.after,), phase.source, (*phase.path, "after"), phase.id
            )
            self.check_phase_arguments(phase)

    def matched(self, selectors: Sequence[ToolSelector]) -> list[Tool]:
        return [
            tool
            for name, tool in self.by_name.items()
            if any(selector.matches(name) for selector in selectors)
        ]

    def check_names(
        self,
        selectors: Sequence[ToolSelector],
        source: str,
        path: tuple[str, ...],
        rule: str,
    ) -> None:
        """Report exact tool names (not globs, not groups) the request lacks."""
        for selector in selectors:
            if selector.text.startswith("group:"):
                continue
            for name in selector.exact_names:
                if name in self.by_name:
                    continue
                if not self.strict and not _close_match(name, self.by_name):
                    continue
                self.add(
                    f"unknown tool {name!r}: no tool of that name in the request."
                    f"{suggest(name, list(self.by_name))} Known tools: "
                    f"{', '.join(self.by_name) or 'none'}.",
                    source,
                    *path,
                    rule=rule,
                )

    def check_arguments(self, rule: CompiledRule, tool: Tool) -> None:
        name = tool.function.name
        properties = (tool.function.parameters or {}).get("properties", {})
        for argument, constraint in rule.arguments.items():
            where = (*rule.path, "arguments", argument)
            if argument not in properties:
                self.unknown_argument(rule, name, argument, properties, where)
                continue
            try:
                check_constraint(constraint, properties[argument])
            except ConstraintProblem as problem:
                keyword = (problem.keyword,) if problem.keyword else ()
                self.add(
                    f"{rule.id} on {name}: arguments.{argument}: {problem}",
                    rule.source,
                    *where,
                    *keyword,
                    rule=rule.id,
                )
                continue
            narrowed = narrow_property(properties[argument], constraint)
            if narrowed.get("enum") == []:
                self.add(
                    f"{rule.id} on {name}: arguments.{argument}: the policy's enum "
                    "shares no value with the tool's enum, so no value is valid; "
                    "fix the list or forbid the tool",
                    rule.source,
                    *where,
                    "enum",
                    rule=rule.id,
                )

        for spec in rule.allow_lists:
            where = (*rule.path, "allow_lists", spec.argument)
            if spec.argument not in properties:
                self.unknown_argument(rule, name, spec.argument, properties, where)
                continue
            if not _holds_strings(properties[spec.argument]):
                self.add(
                    f"{rule.id} on {name}: allow-list on argument "
                    f"{spec.argument!r}, whose type is not string or array of "
                    "strings; allow-lists apply to text values only",
                    rule.source,
                    *where,
                    rule=rule.id,
                )

    def unknown_argument(
        self,
        rule: CompiledRule,
        tool: str,
        argument: str,
        properties: dict[str, Any],
        where: tuple[str, ...],
    ) -> None:
        self.add(
            f"unknown argument {argument!r} of tool {tool!r} in {rule.id}."
            f"{suggest(argument, list(properties))} Arguments: "
            f"{', '.join(properties) or 'none'}.",
            rule.source,
            *where,
            rule=rule.id,
        )

    def check_phase_arguments(self, phase: Any) -> None:
        where = (*phase.path, "same_arguments")
        for ours, theirs in phase.same_arguments.items():
            for tool in self.matched(phase.selectors):
                properties = (tool.function.parameters or {}).get("properties", {})
                if ours not in properties:
                    self.add(
                        f"phase {phase.id}: tool {tool.function.name!r} has no "
                        f"argument {ours!r}.{suggest(ours, list(properties))}",
                        phase.source,
                        *where,
                        rule=phase.id,
                    )
            for tool in self.matched((phase.after,)):
                properties = (tool.function.parameters or {}).get("properties", {})
                if theirs not in properties:
                    self.add(
                        f"phase {phase.id}: tool {tool.function.name!r} has no "
                        f"argument {theirs!r}.{suggest(theirs, list(properties))}",
                        phase.source,
                        *where,
                        rule=phase.id,
                    )


def _close_match(name: str, known: Iterable[str]) -> bool:
    return bool(difflib.get_close_matches(name, list(known), n=1, cutoff=0.8))


def _holds_strings(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind in (None, "string"):
        return True
    if kind == "array":
        items = schema.get("items")
        return isinstance(items, dict) and items.get("type") in (None, "string")
    return False


def _warnings(policy: Policy, tools: Sequence[Tool] | None) -> list[Finding]:
    compiled = policy.compiled()
    names = [tool.function.name for tool in tools] if tools is not None else None
    findings: list[Finding] = []

    def warn(item: Any, message: str, severity: Severity = "warning") -> None:
        findings.append(Finding(severity, message, item.source, item.line, item.id))

    for rule in compiled.rules:
        constant = _constant_value(rule.when)
        if constant is False:
            warn(rule, f"rule {rule.id} never fires: its condition is always false")
        elif constant is True:
            warn(
                rule,
                f"rule {rule.id}: its condition is always true; remove 'when' "
                "or fix the expression",
            )
        elif isinstance(constant, ConditionError):
            warn(
                rule,
                f"rule {rule.id}: its condition always fails ({constant}), so it "
                "denies its tools at every step",
            )
        if names is not None and not any(map(rule.matches, names)):
            # Patterns and groups are meant to cover tools that may be absent.
            exact = all(
                not s.text.startswith("group:") for s in rule.selectors
            ) and all(
                not set(p) & set("*?[") for s in rule.selectors for p in s.patterns
            )
            warn(
                rule,
                f"rule {rule.id} never fires: it selects no tool of the request",
                "warning" if exact else "note",
            )
        if rule.effect == "permit":
            overriding = _always_forbidden_by(compiled, rule, names)
            if overriding is not None:
                warn(
                    rule,
                    f"permit {rule.id} never takes effect: forbid rule {overriding} "
                    "has no condition and covers all its tools",
                )
        if rule.allow_tainted and not _selects_sensitive(compiled, rule, names):
            warn(
                rule,
                f"rule {rule.id}: allow_tainted has no effect, because none of its "
                "tools is listed under 'sensitive'",
            )
        if rule.when is not None and rule.when.uses_args:
            warn(
                rule,
                f"rule {rule.id}: the condition reads args, so it is checked after "
                "generation only and cannot shape the mask; express it with "
                "arguments or allow_lists where possible",
                "note",
            )

    for budget in compiled.budgets:
        if budget.max == 0:
            findings.append(
                Finding(
                    "warning",
                    f"budget {budget.id} has max 0: its tools can never be called",
                    budget.source,
                    budget.line,
                    budget.id,
                )
            )
    return findings


def _constant_value(condition: Condition | None) -> Any:
    """Evaluate a condition that reads no variable; None when it reads any."""
    if condition is None or condition.variables:
        return None
    try:
        return condition.evaluate({})
    except ConditionError as err:
        return err


def _always_forbidden_by(
    compiled: CompiledPolicy, permit: CompiledRule, names: list[str] | None
) -> str | None:
    """Return the id of an unconditional forbid covering every tool of ``permit``."""
    for rule in compiled.rules:
        if rule.effect != "forbid" or rule.when is not None or rule.mode != "enforce":
            continue
        if names is not None:
            covered = [name for name in names if permit.matches(name)]
            if covered and all(rule.matches(name) for name in covered):
                return rule.id
        else:
            patterns = [pattern for s in permit.selectors for pattern in s.patterns]
            exact = all(not set(pattern) & set("*?[") for pattern in patterns)
            if patterns and exact and all(map(rule.matches, patterns)):
                return rule.id
    return None


def _selects_sensitive(
    compiled: CompiledPolicy, rule: CompiledRule, names: list[str] | None
) -> bool:
    if names is not None:
        return any(rule.matches(n) and compiled.is_sensitive(n) for n in names)
    patterns = [pattern for s in rule.selectors for pattern in s.patterns]
    sensitive = [pattern for s in compiled.sensitive for pattern in s.patterns]
    return any(
        compiled.is_sensitive(pattern) or any(rule.matches(s) for s in sensitive)
        for pattern in patterns
    )
