"""Merge a policy with its fragments into rules ready to evaluate.

Every part of every file becomes one compiled item with an id, the file and
line it came from, its tool selectors resolved (groups expanded) and its CEL
compiled: ``tools.<name>`` entries become permit or forbid rules with the id
``tools.<name>``, and ``rules``, ``budgets`` and ``phases`` keep their ids.
Ids are unique across the merged policy, so a decision names exactly one
place in one file.

Compilation collects every problem it finds (:func:`compile_problems`), so
``guardrail policy check`` reports them all at once; :func:`compile_policy`
raises the first.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

from guardrail.errors import PolicyError
from guardrail.policy.allowlists import (
    AllowListError,
    AllowListMatcher,
    Kind,
    build_allow_list,
)
from guardrail.policy.conditions import (
    SESSION_VARIABLES,
    Condition,
    ConditionError,
    compile_condition,
)
from guardrail.policy.constraints import ConstraintProblem, check_constraint

if TYPE_CHECKING:
    from guardrail.policy.model import AllowList, Policy

__all__ = [
    "CompiledAllowList",
    "CompiledBudget",
    "CompiledPhase",
    "CompiledPolicy",
    "CompiledRule",
    "ToolSelector",
    "compile_policy",
    "compile_problems",
]

_SELECTOR = re.compile(r"^(group:[A-Za-z0-9_.-]+|[A-Za-z0-9_*?\[\]!.-]+)$")
_ARGUMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_ALLOW_LIST_KINDS: tuple[Kind, ...] = ("urls", "paths_under", "email_domains")

RuleMode = Literal["enforce", "shadow"]


@dataclass(frozen=True)
class ToolSelector:
    """Tool names or glob patterns, resolved from one selector text.

    ``group:NAME`` expands to the group's members; anything with ``*``,
    ``?`` or ``[`` is a case-sensitive glob; anything else is an exact name.
    """

    text: str
    patterns: tuple[str, ...]

    def matches(self, tool: str) -> bool:
        return any(fnmatchcase(tool, pattern) for pattern in self.patterns)

    @property
    def exact_names(self) -> tuple[str, ...]:
        return tuple(p for p in self.patterns if not _is_glob(p))


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


@dataclass(frozen=True)
class _Origin:
    id: str
    source: str
    line: int | None


@dataclass(frozen=True)
class CompiledAllowList:
    """An allow-list on one argument: static entries plus CEL-computed ones."""

    argument: str
    kind: Kind
    values: tuple[str, ...]
    dynamic: Condition | None
    allow_relative: bool

    def resolve(self, run: Any) -> AllowListMatcher:
        """Return the matcher for this step.

        ``run`` evaluates a :class:`Condition` against the session. Raises
        :class:`ConditionError` when the expression fails or returns
        something other than a string or a list of strings, or when a
        computed entry is invalid.
        """
        values = list(self.values)
        if self.dynamic is not None:
            computed = run(self.dynamic)
            if isinstance(computed, str):
                computed = [computed]
            if not isinstance(computed, list) or not all(
                isinstance(item, str) for item in computed
            ):
                raise ConditionError(
                    f"{self.kind}_from returned {computed!r}; it must return a "
                    "string or a list of strings"
                )
            values.extend(item for item in computed if item)
        try:
            return build_allow_list(
                self.kind, values, allow_relative=self.allow_relative
            )
        except AllowListError as err:
            raise ConditionError(f"{self.kind}_from: {err}") from err


@dataclass(frozen=True)
class CompiledRule:
    id: str
    effect: Literal["permit", "forbid"]
    selectors: tuple[ToolSelector, ...]
    when: Condition | None
    arguments: dict[str, dict[str, Any]]
    allow_lists: tuple[CompiledAllowList, ...]
    allow_tainted: bool
    mode: RuleMode
    source: str
    line: int | None
    description: str | None = None
    path: tuple[str, ...] = ()

    def matches(self, tool: str) -> bool:
        return any(selector.matches(tool) for selector in self.selectors)

    @property
    def narrows(self) -> bool:
        """Whether the rule narrows the arguments (a permit with constraints)."""
        return bool(self.arguments or self.allow_lists)


@dataclass(frozen=True)
class CompiledBudget:
    id: str
    selectors: tuple[ToolSelector, ...]
    max: int
    mode: RuleMode
    source: str
    line: int | None
    path: tuple[str, ...] = ()

    def matches(self, tool: str) -> bool:
        return any(selector.matches(tool) for selector in self.selectors)


@dataclass(frozen=True)
class CompiledPhase:
    id: str
    selectors: tuple[ToolSelector, ...]
    after: ToolSelector
    same_arguments: dict[str, str]
    mode: RuleMode
    source: str
    line: int | None
    path: tuple[str, ...] = ()

    def matches(self, tool: str) -> bool:
        return any(selector.matches(tool) for selector in self.selectors)


@dataclass(frozen=True)
class CompiledPolicy:
    """The merged policy: what evaluation and lint read.

    Rules are kept sorted by id, so no outcome and no reported reason can
    depend on the order in which the files list them.
    """

    name: str
    sha256: str
    default: Literal["deny", "allow"]
    mode: Literal["enforce", "shadow"]
    rules: tuple[CompiledRule, ...]
    budgets: tuple[CompiledBudget, ...]
    phases: tuple[CompiledPhase, ...]
    untrusted: tuple[ToolSelector, ...]
    sensitive: tuple[ToolSelector, ...]
    groups: dict[str, ToolSelector]
    files: tuple[str, ...]
    # Where ``default`` and ``sensitive`` are written, for decisions that
    # they make: (file, line).
    origins: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    _matching: dict[str, tuple[CompiledRule, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def rules_for(self, tool: str) -> tuple[CompiledRule, ...]:
        """Return the rules whose selectors match ``tool`` (cached per name)."""
        cached = self._matching.get(tool)
        if cached is None:
            cached = tuple(rule for rule in self.rules if rule.matches(tool))
            # A dict store is atomic under the GIL; a race only computes twice.
            self._matching[tool] = cached
        return cached

    def is_untrusted(self, tool: str) -> bool:
        return any(selector.matches(tool) for selector in self.untrusted)

    def is_sensitive(self, tool: str) -> bool:
        return any(selector.matches(tool) for selector in self.sensitive)

    def item(self, item_id: str) -> CompiledRule | CompiledBudget | CompiledPhase:
        for item in (*self.rules, *self.budgets, *self.phases):
            if item.id == item_id:
                return item
        raise KeyError(item_id)


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile ``policy`` and its fragments; raise the first problem."""
    compiled, problems = compile_problems(policy)
    if problems:
        raise problems[0]
    if compiled is None:
        raise PolicyError("policy could not be compiled", source=policy.source)
    return compiled


def compile_problems(policy: Policy) -> tuple[CompiledPolicy | None, list[PolicyError]]:
    """Compile ``policy``; return the result (None on problems) and every problem."""
    compiler = _Compiler(policy)
    compiled = compiler.run()
    return (None if compiler.problems else compiled), compiler.problems


class _Compiler:
    def __init__(self, policy: Policy) -> None:
        self.top = policy
        self.documents = (policy, *policy.fragments)
        self.problems: list[PolicyError] = []
        self.groups: dict[str, ToolSelector] = {}
        self.origins: dict[str, _Origin] = {}

    def problem(
        self,
        message: str,
        document: Policy,
        *path: str,
        rule: str | None = None,
    ) -> None:
        self.problems.append(
            PolicyError(
                message,
                source=document.source,
                line=document.line_of(*path),
                rule=rule,
            )
        )

    def run(self) -> CompiledPolicy:
        for document in self.documents:
            self.collect_groups(document)

        rules: list[CompiledRule] = []
        budgets: list[CompiledBudget] = []
        phases: list[CompiledPhase] = []
        untrusted: list[ToolSelector] = []
        sensitive: list[ToolSelector] = []
        for document in self.documents:
            self.check_top_level(document)
            untrusted.extend(self.selectors(document, document.untrusted, "untrusted"))
            sensitive.extend(self.selectors(document, document.sensitive, "sensitive"))
            rules.extend(self.tool_entries(document))
            rules.extend(self.rule_entries(document))
            budgets.extend(self.budget_entries(document))
            phases.extend(self.phase_entries(document))

        return CompiledPolicy(
            name=self.top.name,
            sha256=self.top.sha256,
            default=self.top.default,
            mode=self.top.mode,
            rules=tuple(sorted(rules, key=lambda rule: rule.id)),
            budgets=tuple(sorted(budgets, key=lambda budget: budget.id)),
            phases=tuple(sorted(phases, key=lambda phase: phase.id)),
            untrusted=tuple(untrusted),
            sensitive=tuple(sensitive),
            groups=dict(self.groups),
            files=tuple(document.source for document in self.documents),
            origins=self.key_origins(),
        )

    def key_origins(self) -> dict[str, tuple[str, int | None]]:
        top = self.top
        origins = {
            "default": (top.source, top.line_of("default") or top.line_of("policy"))
        }
        for document in self.documents:
            if document.sensitive:
                origins["taint"] = (document.source, document.line_of("sensitive"))
                break
        return origins

    def check_top_level(self, document: Policy) -> None:
        if document is self.top:
            return
        for key in ("default", "mode"):
            value, expected = getattr(document, key), getattr(self.top, key)
            if key in document.model_fields_set and value != expected:
                self.problem(
                    f"included file sets {key}: {value} but the including file "
                    f"{self.top.source} sets {key}: {expected}; the including file "
                    f"decides, so remove {key} here or make them equal",
                    document,
                    key,
                )

    def register(self, item_id: str, document: Policy, *path: str) -> bool:
        """Record where ``item_id`` is defined; report a duplicate id."""
        line = document.line_of(*path)
        earlier = self.origins.get(item_id)
        if earlier is not None:
            where = (
                f"{earlier.source}:{earlier.line}" if earlier.line else earlier.source
            )
            self.problem(
                f"id {item_id!r} is already used at {where}; rule, budget and "
                "phase ids must be unique across the policy and its includes",
                document,
                *path,
                rule=item_id,
            )
            return False
        self.origins[item_id] = _Origin(item_id, document.source, line)
        return True

    def collect_groups(self, document: Policy) -> None:
        for name, members in document.groups.items():
            path = ("groups", name)
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                self.problem(
                    f"invalid group name {name!r}: use letters, digits, '_', '.' "
                    "or '-'",
                    document,
                    *path,
                )
                continue
            if name in self.groups:
                self.problem(
                    f"group {name!r} is defined twice (in the policy and its "
                    "includes); rename one",
                    document,
                    *path,
                )
                continue
            patterns: list[str] = []
            for member in members:
                if member.startswith("group:") or not _SELECTOR.fullmatch(member):
                    self.problem(
                        f"invalid group member {member!r} in group {name!r}: use "
                        "a tool name or a glob pattern such as 'browser_*' "
                        "(groups cannot contain groups)",
                        document,
                        *path,
                    )
                    continue
                patterns.append(member)
            self.groups[name] = ToolSelector(
                text=f"group:{name}", patterns=tuple(patterns)
            )

    def selectors(
        self, document: Policy, texts: list[str], *path: str
    ) -> list[ToolSelector]:
        resolved: list[ToolSelector] = []
        for text in texts:
            if not _SELECTOR.fullmatch(text):
                self.problem(
                    f"invalid tool selector {text!r}: use a tool name, a glob "
                    "pattern such as 'browser_*', or 'group:NAME'",
                    document,
                    *path,
                )
                continue
            if text.startswith("group:"):
                name = text.removeprefix("group:")
                group = self.groups.get(name)
                if group is None:
                    hint = _suggest(name, list(self.groups))
                    self.problem(
                        f"unknown group {name!r}.{hint} Groups: "
                        f"{', '.join(self.groups) or 'none'}.",
                        document,
                        *path,
                    )
                    continue
                resolved.append(group)
            else:
                resolved.append(ToolSelector(text=text, patterns=(text,)))
        return resolved

    def condition(
        self,
        expression: str | None,
        document: Policy,
        *path: str,
        allowed: frozenset[str] | None = None,
        rule: str | None = None,
    ) -> Condition | None:
        if expression is None:
            return None
        try:
            if allowed is None:
                return compile_condition(expression)
            return compile_condition(expression, allowed=allowed)
        except ConditionError as err:
            self.problem(f"{'.'.join(path)}: {err}", document, *path, rule=rule)
            return None

    def tool_entries(self, document: Policy) -> list[CompiledRule]:
        compiled: list[CompiledRule] = []
        for key, entry in document.tools.items():
            path = ("tools", key)
            rule_id = f"tools.{key}"
            if not self.register(rule_id, document, *path):
                continue
            selectors = self.selectors(document, [key], *path)
            if not entry.allow and (
                entry.arguments or entry.allow_lists or entry.allow_tainted
            ):
                self.problem(
                    f"tools.{key} has allow: false, so arguments, allow_lists and "
                    "allow_tainted have no effect; remove them or set allow: true",
                    document,
                    *path,
                    rule=rule_id,
                )
            compiled.append(
                CompiledRule(
                    id=rule_id,
                    effect="permit" if entry.allow else "forbid",
                    selectors=tuple(selectors),
                    when=self.condition(entry.when, document, *path, "when"),
                    arguments=self.arguments(entry.arguments, document, *path),
                    allow_lists=self.allow_lists(entry.allow_lists, document, *path),
                    allow_tainted=entry.allow_tainted,
                    mode=entry.mode,
                    source=document.source,
                    line=document.line_of(*path),
                    description=entry.description,
                    path=path,
                )
            )
        return compiled

    def rule_entries(self, document: Policy) -> list[CompiledRule]:
        compiled: list[CompiledRule] = []
        for index, entry in enumerate(document.rules):
            path = ("rules", str(index))
            if not self.register(entry.id, document, *path):
                continue
            if entry.effect == "forbid" and (
                entry.arguments or entry.allow_lists or entry.allow_tainted
            ):
                self.problem(
                    f"rule {entry.id!r} forbids, so arguments, allow_lists and "
                    "allow_tainted do not apply; to forbid some argument values, "
                    "write a condition on args in 'when'",
                    document,
                    *path,
                    rule=entry.id,
                )
            compiled.append(
                CompiledRule(
                    id=entry.id,
                    effect=entry.effect,
                    selectors=tuple(
                        self.selectors(document, entry.tools, *path, "tools")
                    ),
                    when=self.condition(
                        entry.when, document, *path, "when", rule=entry.id
                    ),
                    arguments=self.arguments(entry.arguments, document, *path),
                    allow_lists=self.allow_lists(entry.allow_lists, document, *path),
                    allow_tainted=entry.allow_tainted,
                    mode=entry.mode,
                    source=document.source,
                    line=document.line_of(*path),
                    description=entry.description,
                    path=path,
                )
            )
        return compiled

    def budget_entries(self, document: Policy) -> list[CompiledBudget]:
        compiled: list[CompiledBudget] = []
        for index, entry in enumerate(document.budgets):
            path = ("budgets", str(index))
            if not self.register(entry.id, document, *path):
                continue
            compiled.append(
                CompiledBudget(
                    id=entry.id,
                    selectors=tuple(
                        self.selectors(document, entry.tools, *path, "tools")
                    ),
                    max=entry.max,
                    mode=entry.mode,
                    source=document.source,
                    line=document.line_of(*path),
                    path=path,
                )
            )
        return compiled

    def phase_entries(self, document: Policy) -> list[CompiledPhase]:
        compiled: list[CompiledPhase] = []
        for index, entry in enumerate(document.phases):
            path = ("phases", str(index))
            if not self.register(entry.id, document, *path):
                continue
            after = self.selectors(document, [entry.after], *path, "after")
            for ours, theirs in entry.same_arguments.items():
                if not (_ARGUMENT.fullmatch(ours) and _ARGUMENT.fullmatch(theirs)):
                    self.problem(
                        f"same_arguments entry {ours!r}: {theirs!r} must map an "
                        "argument name to an argument name",
                        document,
                        *path,
                        "same_arguments",
                    )
            compiled.append(
                CompiledPhase(
                    id=entry.id,
                    selectors=tuple(
                        self.selectors(document, entry.tools, *path, "tools")
                    ),
                    after=after[0] if after else ToolSelector(entry.after, ()),
                    same_arguments=dict(entry.same_arguments),
                    mode=entry.mode,
                    source=document.source,
                    line=document.line_of(*path),
                    path=path,
                )
            )
        return compiled

    def arguments(
        self, arguments: dict[str, dict[str, Any]], document: Policy, *path: str
    ) -> dict[str, dict[str, Any]]:
        """Check constraint keywords without the tool's schema (lint adds it)."""
        for argument, constraint in arguments.items():
            where = (*path, "arguments", argument)
            try:
                check_constraint(constraint, {})
            except ConstraintProblem as problem:
                keyword = (problem.keyword,) if problem.keyword else ()
                self.problem(
                    f"{'.'.join(where)}: {problem}", document, *where, *keyword
                )
        return {name: dict(value) for name, value in arguments.items()}

    def allow_lists(
        self, allow_lists: dict[str, AllowList], document: Policy, *path: str
    ) -> tuple[CompiledAllowList, ...]:
        compiled: list[CompiledAllowList] = []
        for argument, spec in allow_lists.items():
            where = (*path, "allow_lists", argument)
            kinds = [
                kind
                for kind in _ALLOW_LIST_KINDS
                if getattr(spec, kind) or getattr(spec, f"{kind}_from") is not None
            ]
            if len(kinds) != 1:
                self.problem(
                    f"allow-list for argument {argument!r} must use exactly one "
                    "of urls, paths_under or email_domains (with or without "
                    f"its *_from form); found {', '.join(kinds) or 'none'}",
                    document,
                    *where,
                )
                continue
            kind = kinds[0]
            if spec.allow_relative and kind != "paths_under":
                self.problem(
                    "allow_relative applies to paths_under only",
                    document,
                    *where,
                    "allow_relative",
                )
            values = tuple(getattr(spec, kind))
            try:
                # Roots computed by *_from count too, so allow_relative is
                # checked against the static list only when it has entries.
                build_allow_list(
                    kind, values, allow_relative=spec.allow_relative and bool(values)
                )
            except AllowListError as err:
                self.problem(f"{'.'.join(where)}: {err}", document, *where, kind)
                continue
            dynamic = self.condition(
                getattr(spec, f"{kind}_from"),
                document,
                *where,
                f"{kind}_from",
                allowed=SESSION_VARIABLES,
            )
            compiled.append(
                CompiledAllowList(
                    argument=argument,
                    kind=kind,
                    values=values,
                    dynamic=dynamic,
                    allow_relative=spec.allow_relative,
                )
            )
        return tuple(compiled)


def _suggest(name: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""
