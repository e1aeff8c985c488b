"""Decide the allowed actions for the next step of a session.

For each tool of the request, the decision is made from the rules that
select it, in this order of precedence (each step can only block):

1. a condition of an enforced rule that fails to evaluate blocks the tool
   and is logged as ``condition_failed``;
2. an enforced forbid rule whose condition holds blocks it;
3. an exhausted budget, or a phase whose earlier call has not succeeded,
   blocks it;
4. in a tainted session, a sensitive tool needs a permit with
   ``allow_tainted: true``;
5. otherwise the tool is allowed when a permit's condition holds, or, with
   ``default: allow``, when no permit applies to it at all.

The outcome does not depend on rule order: rules are sorted by id and every
step reads all of them. The argument schema of an allowed tool is the union
(``anyOf``) of what its applicable permits allow, narrowed by the enums of
phases with ``same_arguments``. Conditions that read ``args`` cannot be
known before the call exists, so here they count as holding for permits
and as not holding for forbids; :func:`check_call` decides them after
generation. ``tool_choice`` from the request can only narrow the result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import structlog

from guardrail.policy.allowlists import AllowListMatcher
from guardrail.policy.compiled import CompiledPolicy, CompiledRule
from guardrail.policy.conditions import Condition, ConditionError, new_context
from guardrail.policy.constraints import narrow_parameters, narrow_property
from guardrail.policy.model import Policy
from guardrail.request import ChatRequest, NamedToolChoice
from guardrail.session import CallRecord, Session

__all__ = [
    "AllowedActions",
    "AllowedTool",
    "Decision",
    "Mode",
    "check_call",
    "check_calls",
    "evaluate_policy",
    "session_variables",
]

log = structlog.get_logger("guardrail.policy")

Mode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class AllowedTool:
    """A tool that may be called, with the schema its arguments must satisfy."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """The reason a tool is allowed or blocked at this step.

    ``rule`` is the id of the rule, budget or phase that decided (several
    permit ids joined by ``+`` when they all apply, ``default`` when none
    does), with the file and line it is written at. ``shadow_allowed`` is
    set only when rules in shadow mode would have decided otherwise.
    """

    tool: str
    allowed: bool
    reason: str
    rule: str | None = None
    source: str | None = None
    line: int | None = None
    shadow_allowed: bool | None = None
    shadow_rule: str | None = None


@dataclass(frozen=True)
class AllowedActions:
    """Everything the grammar needs: the mode, the tools and their schemas.

    ``mode`` is ``none`` (no call can start), ``auto`` (text, or calls to the
    allowed tools) or ``required`` (at least one call to an allowed tool).
    When ``required`` leaves no tool, the grammar allows only end of sequence.
    ``tainted`` is True when an untrusted result is in the conversation.
    """

    mode: Mode
    tools: tuple[AllowedTool, ...]
    parallel_calls: bool = True
    decisions: tuple[Decision, ...] = field(default=(), compare=False)
    tainted: bool = field(default=False, compare=False)

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools)

    def tool(self, name: str) -> AllowedTool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None

    def decision(self, name: str) -> Decision | None:
        for decision in self.decisions:
            if decision.tool == name:
                return decision
        return None

    def cache_key(self) -> str:
        """Return a digest of the fields that shape the grammar."""
        payload = {
            "mode": self.mode,
            "parallel_calls": self.parallel_calls,
            "tools": [[tool.name, tool.parameters] for tool in self.tools],
        }
        encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


def evaluate_policy(
    policy: Policy, request: ChatRequest, session: Session
) -> AllowedActions:
    """Return the allowed actions for the next assistant turn.

    Cost: one CEL run per condition per step (per tool for conditions that
    read ``tool``), on a context built once per step.
    """
    compiled = policy.compiled()
    names = [tool.function.name for tool in request.tools]
    env = _Environment(compiled, session, names)
    has_shadow = _has_shadow(compiled)

    decisions: list[Decision] = []
    allowed: list[AllowedTool] = []
    for tool in request.tools:
        name = tool.function.name
        outcome = _decide(compiled, name, env, shadow=False)
        parameters = None
        if outcome.allowed:
            parameters = _parameters(tool.function.parameters, outcome)
            if parameters is None:
                outcome = _blocked(
                    "no argument value satisfies the tool's schema, the permits "
                    "and the phases together",
                    outcome.item,
                )

        shadow_allowed = shadow_rule = None
        if has_shadow:
            shadow = _decide(compiled, name, env, shadow=True)
            if shadow.allowed != outcome.allowed:
                shadow_allowed, shadow_rule = shadow.allowed, shadow.item_id
                log.info(
                    "shadow_decision_differs",
                    policy=compiled.name,
                    policy_sha256=compiled.sha256,
                    tool=name,
                    enforced=outcome.allowed,
                    shadow=shadow.allowed,
                    rule=shadow.item_id,
                )

        decisions.append(
            Decision(
                tool=name,
                allowed=outcome.allowed,
                reason=outcome.reason,
                rule=outcome.item_id,
                source=outcome.source,
                line=outcome.line,
                shadow_allowed=shadow_allowed,
                shadow_rule=shadow_rule,
            )
        )
        if outcome.allowed and parameters is not None:
            allowed.append(AllowedTool(name=name, parameters=parameters))

    mode, allowed = _apply_tool_choice(request, allowed, decisions)
    if mode == "none":
        allowed = []
    parallel = request.parallel_tool_calls and not _one_call_left(
        compiled, session, [tool.name for tool in allowed]
    )

    return AllowedActions(
        mode=mode,
        tools=tuple(allowed),
        parallel_calls=parallel,
        decisions=tuple(decisions),
        tainted=bool(env.variables["tainted"]),
    )


def check_call(
    policy: Policy, name: str, arguments: dict[str, Any], session: Session
) -> list[str]:
    """Return why the call breaks the policy; empty when the policy allows it.

    Decides everything with the arguments known: conditions on ``args``,
    each permit's argument constraints and allow-lists (parsed, not matched
    by pattern), and the exact values a phase's ``same_arguments`` demands.
    """
    compiled = policy.compiled()
    env = _Environment(compiled, session, [name], args=arguments)
    outcome = _decide(compiled, name, env, shadow=False, args=arguments)
    if outcome.allowed:
        return []
    return [f"{name}: {outcome.reason}{_where(outcome)}"]


def check_calls(
    policy: Policy, calls: Iterable[tuple[str, dict[str, Any]]], session: Session
) -> list[str]:
    """Check the calls of one turn in order; each counts toward later budgets."""
    errors: list[str] = []
    for index, (name, arguments) in enumerate(calls):
        errors.extend(
            f"calls[{index}] {problem}"
            for problem in check_call(policy, name, arguments, session)
        )
        session = session.with_call(name, arguments)
    return errors


def session_variables(
    compiled: CompiledPolicy, session: Session, tool_names: Iterable[str]
) -> dict[str, Any]:
    """Return the CEL variables of a step (all but ``tool`` and ``args``).

    ``counts`` contains every tool of the request and of ``tool_names``, with
    0 for those not called, so ``counts.refund_order`` never fails on a
    tool the request offers.
    """
    calls = [_call_variables(compiled, call) for call in session.calls]
    counts = dict.fromkeys((*session.tool_names, *tool_names), 0)
    counts.update(session.counts())
    empty_call = {
        "id": "",
        "name": "",
        "arguments": {},
        "step": 0,
        "result": None,
        "result_json": None,
        "ok": False,
        "pending": False,
        "error": False,
        "untrusted": False,
    }
    return {
        "calls": calls,
        "counts": counts,
        "step": session.step,
        "tainted": any(call["untrusted"] and not call["pending"] for call in calls),
        "last": calls[-1] if calls else empty_call,
        "request": {
            "user": session.user,
            "user_domain": session.user_domain,
            "agent": session.agent,
            "tenant": session.tenant,
            "metadata": dict(session.metadata),
            "headers": dict(session.headers),
        },
    }


def _call_variables(compiled: CompiledPolicy, call: CallRecord) -> dict[str, Any]:
    return {
        "id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "step": call.step,
        "result": call.result,
        "result_json": call.result_json(),
        "ok": call.ok,
        "pending": call.pending,
        "error": call.error,
        "untrusted": call.untrusted or compiled.is_untrusted(call.name),
    }


class _Environment:
    """The CEL context of one step, with results cached per condition.

    A condition that reads neither ``tool`` nor ``args`` runs once per step
    whatever the number of tools; the others run once per tool.
    """

    def __init__(
        self,
        compiled: CompiledPolicy,
        session: Session,
        tool_names: Iterable[str],
        *,
        args: dict[str, Any] | None = None,
    ) -> None:
        self.compiled = compiled
        self.session = session
        self.args = args
        self.variables = session_variables(compiled, session, tool_names)
        self._contexts: dict[str | None, Any] = {}
        self._results: dict[tuple[int, str | None], Any] = {}

    def _context(self, tool: str | None) -> Any:
        if tool not in self._contexts:
            variables = dict(self.variables)
            if tool is not None:
                variables["tool"] = tool
                if self.args is not None:
                    variables["args"] = self.args
            try:
                self._contexts[tool] = new_context(variables)
            except Exception as err:  # an unconvertible value denies
                self._contexts[tool] = ConditionError(
                    f"session data cannot be converted to CEL values: {err}"
                )
        return self._contexts[tool]

    def run(self, condition: Condition, tool: str) -> Any:
        """Evaluate ``condition`` for ``tool``; raise :class:`ConditionError`."""
        per_tool = condition.uses_tool or condition.uses_args
        key = (id(condition), tool if per_tool else None)
        if key not in self._results:
            context = self._context(tool if per_tool else None)
            try:
                if isinstance(context, ConditionError):
                    raise context
                self._results[key] = condition.evaluate(context)
            except ConditionError as err:
                self._results[key] = err
        result = self._results[key]
        if isinstance(result, ConditionError):
            raise result
        return result

    def status(self, condition: Condition | None, tool: str) -> bool | None:
        """True or False, or None when the condition needs ``args`` not known yet."""
        if condition is None:
            return True
        if condition.uses_args and self.args is None:
            return None
        value = self.run(condition, tool)
        if not isinstance(value, bool):
            raise ConditionError(
                f"condition returned {type(value).__name__} {value!r}, expected a "
                "bool; compare the value, for example 'x == 1'"
            )
        return value


@dataclass(frozen=True)
class _Origin:
    """The policy key behind a decision that no rule id names."""

    id: str
    source: str | None
    line: int | None


def _origin(compiled: CompiledPolicy, key: str) -> _Origin:
    source, line = compiled.origins.get(key, (None, None))
    return _Origin(key, source, line)


@dataclass
class _Outcome:
    allowed: bool
    reason: str
    item: Any = None
    permits: list[tuple[CompiledRule, list[AllowListMatcher]]] = field(
        default_factory=list
    )
    unconstrained: bool = False
    phase_values: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def item_id(self) -> str | None:
        if self.permits:
            return "+".join(rule.id for rule, _ in self.permits)
        if self.item is None:
            return "default"
        return str(self.item.id)

    @property
    def source(self) -> str | None:
        if self.permits:
            return self.permits[0][0].source
        return getattr(self.item, "source", None)

    @property
    def line(self) -> int | None:
        if self.permits:
            return self.permits[0][0].line
        return getattr(self.item, "line", None)


def _blocked(reason: str, item: Any = None) -> _Outcome:
    return _Outcome(allowed=False, reason=reason, item=item)


def _where(outcome: _Outcome) -> str:
    """Return `` (rule ID at file:line)``, leaving out what the reason names."""
    if outcome.item_id in (None, "default") or outcome.source is None:
        return ""
    location = outcome.source
    if outcome.line is not None:
        location = f"{location}:{outcome.line}"
    if outcome.item_id and outcome.item_id in outcome.reason:
        return f" (at {location})"
    return f" (rule {outcome.item_id} at {location})"


def _decide(
    compiled: CompiledPolicy,
    tool: str,
    env: _Environment,
    *,
    shadow: bool,
    args: dict[str, Any] | None = None,
) -> _Outcome:
    """Decide one tool; with ``args``, decide one concrete call."""

    def active(item: Any) -> bool:
        return bool(item.mode == "enforce" or shadow)

    def runner(condition: Condition) -> Any:
        return env.run(condition, tool)

    failed: list[tuple[CompiledRule, ConditionError]] = []
    forbids: list[CompiledRule] = []
    permits: list[tuple[CompiledRule, list[AllowListMatcher]]] = []
    for rule in compiled.rules_for(tool):
        if not active(rule):
            continue
        try:
            status = env.status(rule.when, tool)
            if rule.effect == "forbid":
                if status is True:
                    forbids.append(rule)
                continue
            if status is False:
                continue
            lists = [spec.resolve(runner) for spec in rule.allow_lists]
        except ConditionError as err:
            failed.append((rule, err))
            continue
        if not any(_is_empty(matcher) for matcher in lists):
            permits.append((rule, lists))

    if failed:
        for rule, err in failed:
            _log_failure(compiled, rule, tool, err, shadow=rule.mode == "shadow")
        rule, err = failed[0]
        return _blocked(f"condition failed to evaluate ({err}), so it denies", rule)
    if forbids:
        rule = forbids[0]
        condition = f" because {rule.when.source}" if rule.when else ""
        return _blocked(f"forbidden{condition}", rule)

    blocked = _check_budgets(compiled, tool, env.session, active)
    if blocked is not None:
        return blocked
    phase_values, blocked = _check_phases(compiled, tool, env.session, active, args)
    if blocked is not None:
        return blocked

    sensitive_in_taint = bool(env.variables["tainted"]) and compiled.is_sensitive(tool)
    if sensitive_in_taint:
        permits = [(rule, lists) for rule, lists in permits if rule.allow_tainted]
        if not permits:
            source = _taint_source(env)
            return _blocked(
                f"the session is tainted by an untrusted result from {source} and "
                f"{tool} is sensitive; no permit with allow_tainted applies",
                _origin(compiled, "taint"),
            )

    if args is not None and permits:
        violations = [
            f"{rule.id}: {problems[0]}"
            for rule, lists in permits
            if (problems := _permit_violations(rule, lists, args))
        ]
        if len(violations) == len(permits):
            return _blocked(
                "arguments are outside every applicable permit ("
                + "; ".join(violations)
                + ")",
                permits[0][0],
            )
        permits = [
            (rule, lists)
            for rule, lists in permits
            if not _permit_violations(rule, lists, args)
        ]

    if permits:
        narrowed = all(rule.narrows for rule, _ in permits) or phase_values
        return _Outcome(
            allowed=True,
            reason="permitted, arguments narrowed" if narrowed else "permitted",
            permits=permits,
            phase_values=phase_values,
        )
    if compiled.default == "allow" and not sensitive_in_taint:
        return _Outcome(
            allowed=True,
            reason="no rule applies; default: allow",
            item=_origin(compiled, "default"),
            unconstrained=True,
            phase_values=phase_values,
        )
    return _blocked(
        f"no rule permits {tool} here; default: deny", _origin(compiled, "default")
    )


def _check_budgets(
    compiled: CompiledPolicy,
    tool: str,
    session: Session,
    active: Callable[[Any], bool],
) -> _Outcome | None:
    for budget in compiled.budgets:
        if not active(budget) or not budget.matches(tool):
            continue
        used = sum(1 for call in session.calls if budget.matches(call.name))
        if used >= budget.max:
            return _blocked(
                f"budget {budget.id} is used up ({used} of {budget.max} calls)",
                budget,
            )
    return None


def _check_phases(
    compiled: CompiledPolicy,
    tool: str,
    session: Session,
    active: Callable[[Any], bool],
    args: dict[str, Any] | None,
) -> tuple[dict[str, list[Any]], _Outcome | None]:
    values: dict[str, list[Any]] = {}
    for phase in compiled.phases:
        if not active(phase) or not phase.matches(tool):
            continue
        earlier = [
            call
            for call in session.calls
            if call.ok
            and phase.after.matches(call.name)
            and all(
                theirs in call.arguments for theirs in phase.same_arguments.values()
            )
        ]
        if args is not None:
            earlier = [
                call
                for call in earlier
                if all(
                    ours in args and args[ours] == call.arguments[theirs]
                    for ours, theirs in phase.same_arguments.items()
                )
            ]
        if not earlier:
            same = ""
            if phase.same_arguments:
                pairs = ", ".join(f"{a}={b}" for a, b in phase.same_arguments.items())
                same = f" with the same arguments ({pairs})"
            return values, _blocked(
                f"phase {phase.id}: needs an earlier successful call to "
                f"{phase.after.text}{same}",
                phase,
            )
        for ours, theirs in phase.same_arguments.items():
            seen = _unique(call.arguments[theirs] for call in earlier)
            if ours in values:
                seen = [value for value in values[ours] if value in seen]
            values[ours] = seen
    return values, None


def _unique(items: Iterable[Any]) -> list[Any]:
    """Return distinct values in a canonical order, so cache keys are stable."""
    by_key = {json.dumps(item, sort_keys=True): item for item in items}
    return [by_key[key] for key in sorted(by_key)]


def _taint_source(env: _Environment) -> str:
    for call in reversed(env.variables["calls"]):
        if call["untrusted"] and not call["pending"]:
            return f"{call['name']} (step {call['step']})"
    return "an earlier call"


def _permit_violations(
    rule: CompiledRule, lists: list[AllowListMatcher], args: dict[str, Any]
) -> list[str]:
    problems: list[str] = []
    for argument, constraint in rule.arguments.items():
        if argument not in args:
            continue
        validator = jsonschema.Draft202012Validator(constraint)
        problems.extend(
            f"argument {argument!r}: {error.message}"
            for error in validator.iter_errors(args[argument])
        )
    for spec, matcher in zip(rule.allow_lists, lists, strict=True):
        if spec.argument not in args:
            continue
        value = args[spec.argument]
        for item in value if isinstance(value, list) else [value]:
            problem = matcher.check(item)
            if problem is not None:
                problems.append(f"argument {spec.argument!r}: {problem}")
    return problems


def _is_empty(matcher: AllowListMatcher) -> bool:
    return not any(
        getattr(matcher, name, ()) for name in ("entries", "roots", "domains")
    )


def _parameters(
    schema: dict[str, Any] | None, outcome: _Outcome
) -> dict[str, Any] | None:
    """Build the argument schema of an allowed tool; None if nothing fits."""
    properties = (schema or {}).get("properties", {})
    if outcome.unconstrained or any(not rule.narrows for rule, _ in outcome.permits):
        candidates: list[dict[str, Any] | None] = [narrow_parameters(schema, {})]
    else:
        candidates = [
            _permit_schema(schema, properties, rule, lists)
            for rule, lists in outcome.permits
        ]

    branches: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        if candidate is None:
            continue
        narrowed = _narrow_phases(candidate, outcome.phase_values)
        if narrowed is not None:
            branches[json.dumps(narrowed, sort_keys=True)] = narrowed
    if not branches:
        return None
    if len(branches) == 1:
        return next(iter(branches.values()))
    return {"anyOf": [branches[key] for key in sorted(branches)]}


def _permit_schema(
    schema: dict[str, Any] | None,
    properties: dict[str, Any],
    rule: CompiledRule,
    lists: list[AllowListMatcher],
) -> dict[str, Any] | None:
    """Narrow the tool's schema by one permit; None if it names a missing argument.

    A constraint on an argument the tool does not declare cannot be put in
    the grammar, so the permit grants nothing (lint reports the name).
    """
    names = [*rule.arguments, *(spec.argument for spec in rule.allow_lists)]
    if any(name not in properties for name in names):
        return None
    narrowed = narrow_parameters(schema, rule.arguments)
    for spec, matcher in zip(rule.allow_lists, lists, strict=True):
        target = narrowed["properties"][spec.argument]
        pattern = {"pattern": matcher.pattern}
        if target.get("type") == "array" and isinstance(target.get("items"), dict):
            target = {**target, "items": narrow_property(target["items"], pattern)}
        else:
            target = narrow_property(target, pattern)
        narrowed["properties"][spec.argument] = target
    return narrowed


def _narrow_phases(
    schema: dict[str, Any], values: dict[str, list[Any]]
) -> dict[str, Any] | None:
    if not values:
        return schema
    narrowed = json.loads(json.dumps(schema))
    properties = narrowed.get("properties", {})
    for argument, allowed in values.items():
        if argument not in properties:
            return None
        prop = narrow_property(properties[argument], {"enum": allowed})
        if not prop["enum"]:
            return None
        properties[argument] = prop
    return narrowed


def _one_call_left(
    compiled: CompiledPolicy, session: Session, allowed: list[str]
) -> bool:
    """Tell whether an enforced budget over an allowed tool has one call left.

    Parallel calls are then switched off, so the grammar itself stops a
    second call; post-validation counts the calls of a turn in any case.
    """
    for budget in compiled.budgets:
        if budget.mode != "enforce" or not any(map(budget.matches, allowed)):
            continue
        used = sum(1 for call in session.calls if budget.matches(call.name))
        if budget.max - used <= 1:
            return True
    return False


def _has_shadow(compiled: CompiledPolicy) -> bool:
    items = (*compiled.rules, *compiled.budgets, *compiled.phases)
    return any(item.mode == "shadow" for item in items)


def _log_failure(
    compiled: CompiledPolicy,
    rule: CompiledRule,
    tool: str,
    err: ConditionError,
    *,
    shadow: bool,
) -> None:
    log.warning(
        "condition_failed",
        policy=compiled.name,
        policy_sha256=compiled.sha256,
        rule=rule.id,
        tool=tool,
        source=rule.source,
        line=rule.line,
        rule_mode="shadow" if shadow else "enforce",
        error=str(err),
    )


def _apply_tool_choice(
    request: ChatRequest, allowed: list[AllowedTool], decisions: list[Decision]
) -> tuple[Mode, list[AllowedTool]]:
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        for index, decision in enumerate(decisions):
            if decision.tool != name and decision.allowed:
                decisions[index] = Decision(
                    tool=decision.tool,
                    allowed=False,
                    reason=f"tool_choice names {name!r}",
                    rule="tool_choice",
                )
        return "required", [tool for tool in allowed if tool.name == name]

    if choice is None:
        return ("auto" if request.tools else "none"), allowed
    return choice, allowed
