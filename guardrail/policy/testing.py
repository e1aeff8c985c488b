"""Policy unit tests written in YAML, run by ``guardrail policy test``.

A test file names the policy and the tools, then lists cases::

    policy: ../customer-support.yaml     # relative to this file
    tools: ../../examples/customer-support.json   # a request body or a tools list
    request: {user: alice@example.com}   # optional: user, metadata, headers,
                                         # tool_choice, parallel_tool_calls
    tests:
      - name: refund needs a lookup first
        history:                         # earlier calls, one turn each
          - call: lookup_order           # unless they share a 'turn' number
            arguments: {order_id: O-1001}
            result: {status: delivered}  # text or JSON; leave out for no result
            untrusted: false             # mark the result untrusted
            error: false                 # mark the call as failed
        expect:
          allowed: [lookup_order, refund_order]   # the exact allowed set
          blocked: [delete_customer]              # or: these are blocked
      - name: refunds above the cap are rejected
        call: {name: refund_order, arguments: {order_id: O-1001, amount: 500}}
        expect: {decision: deny, reason: maximum}

The history becomes real chat messages that go through the same request
parsing and session rebuild as production traffic. A ``call`` is decided by
the whole pipeline after the mask: it must be in the allowed set, match the
allowed argument schema, and pass :meth:`Policy.check_call`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from guardrail.errors import GuardrailError, PolicyError
from guardrail.policy.evaluate import AllowedActions, evaluate_policy
from guardrail.policy.loader import load_policy
from guardrail.policy.model import Policy
from guardrail.request import ChatRequest, parse_chat_request
from guardrail.session import Session, session_from_request

__all__ = [
    "CaseResult",
    "PolicyTestFile",
    "PolicyTestReport",
    "build_request",
    "run_policy_tests",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HistoryEntry(_Strict):
    call: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    untrusted: bool = False
    error: bool = False
    turn: int | None = None


class CallSpec(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Expectation(_Strict):
    allowed: list[str] | None = None
    blocked: list[str] | None = None
    decision: Literal["allow", "deny"] | None = None
    reason: str | None = None
    rule: str | None = None
    tainted: bool | None = None


class RequestDefaults(_Strict):
    user: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    tool_choice: Any = None
    parallel_tool_calls: bool = True


class PolicyCase(_Strict):
    name: str = Field(min_length=1)
    history: list[HistoryEntry] = Field(default_factory=list)
    call: CallSpec | None = None
    request: RequestDefaults | None = None
    expect: Expectation


class PolicyTestFile(_Strict):
    policy: str
    tools: str | list[dict[str, Any]]
    request: RequestDefaults = Field(default_factory=RequestDefaults)
    tests: list[PolicyCase] = Field(min_length=1)


@dataclass
class CaseResult:
    name: str
    line: int | None
    passed: bool
    differences: list[str] = field(default_factory=list)


@dataclass
class PolicyTestReport:
    source: str
    policy: str
    results: list[CaseResult]

    @property
    def failed(self) -> list[CaseResult]:
        return [result for result in self.results if not result.passed]

    @property
    def passed(self) -> bool:
        return not self.failed


def run_policy_tests(path: str | Path) -> PolicyTestReport:
    """Run every case of the test file at ``path``.

    Raises :class:`PolicyError` (with file:line) when the test file or the
    policy it names is invalid; a failing case is a result, not an error.
    """
    path = Path(path)
    document, spec = _read_test_file(path)
    policy_path = path.parent / spec.policy
    policy = load_policy(policy_path)
    tools = _read_tools(spec.tools, path)

    results: list[CaseResult] = []
    for index, case in enumerate(spec.tests):
        line = _line(document, "tests", index)
        defaults = case.request or spec.request
        try:
            request, headers = build_request(case, defaults, tools)
            session = session_from_request(request, headers=headers)
            actions = evaluate_policy(policy, request, session)
            differences = _compare(case, policy, actions, session)
        except GuardrailError as err:
            differences = [f"the case could not run: {err}"]
        results.append(CaseResult(case.name, line, not differences, differences))

    return PolicyTestReport(source=str(path), policy=policy.name, results=results)


def build_request(
    case: PolicyCase, defaults: RequestDefaults, tools: list[dict[str, Any]]
) -> tuple[ChatRequest, dict[str, str]]:
    """Turn a case's history into a chat request and the headers to pass."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": case.name}]
    turns: list[list[tuple[str, HistoryEntry]]] = []
    last_turn: int | None = None
    for index, entry in enumerate(case.history):
        call_id = f"call_{index}"
        if entry.turn is None or entry.turn != last_turn or not turns:
            turns.append([])
        turns[-1].append((call_id, entry))
        last_turn = entry.turn

    for turn in turns:
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": entry.call,
                            "arguments": json.dumps(entry.arguments),
                        },
                    }
                    for call_id, entry in turn
                ],
            }
        )
        for call_id, entry in turn:
            if entry.result is None and not entry.error:
                continue
            content = entry.result
            if not isinstance(content, str):
                content = json.dumps(content if content is not None else {})
            message: dict[str, Any] = {
                "role": "tool",
                "tool_call_id": call_id,
                "content": content,
            }
            if entry.untrusted:
                message["untrusted"] = True
            if entry.error:
                message["is_error"] = True
            messages.append(message)

    body: dict[str, Any] = {
        "messages": messages,
        "tools": tools,
        "parallel_tool_calls": defaults.parallel_tool_calls,
    }
    if defaults.tool_choice is not None:
        body["tool_choice"] = defaults.tool_choice
    if defaults.user is not None:
        body["user"] = defaults.user
    if defaults.metadata:
        body["metadata"] = defaults.metadata
    return parse_chat_request(body), dict(defaults.headers)


def _compare(
    case: PolicyCase, policy: Policy, actions: AllowedActions, session: Session
) -> list[str]:
    expect = case.expect
    differences: list[str] = []
    allowed = set(actions.tool_names)

    def blocked_reason(name: str) -> str:
        decision = actions.decision(name)
        if decision is None:
            return "not a tool of the request"
        where = f" ({decision.source}:{decision.line})" if decision.line else ""
        return f"{decision.reason}{where}"

    if expect.allowed is not None and set(expect.allowed) != allowed:
        differences.append("allowed tools differ (- expected, + actual):")
        for name in sorted(set(expect.allowed) - allowed):
            differences.append(f"  - {name}: blocked, {blocked_reason(name)}")
        for name in sorted(allowed - set(expect.allowed)):
            differences.append(f"  + {name}: allowed, {blocked_reason(name)}")
    for name in expect.blocked or []:
        if name in allowed:
            differences.append(
                f"expected {name} blocked, but it is allowed: {blocked_reason(name)}"
            )
    if expect.tainted is not None and expect.tainted != actions.tainted:
        differences.append(
            f"expected tainted: {str(expect.tainted).lower()}, got "
            f"{str(actions.tainted).lower()}"
        )

    if case.call is not None:
        reasons = _call_problems(case.call, policy, actions, session)
        decision = "deny" if reasons else "allow"
        if expect.decision is not None and expect.decision != decision:
            why = "; ".join(reasons) if reasons else "every check passed"
            differences.append(
                f"call {case.call.name}: expected {expect.decision}, got {decision} "
                f"({why})"
            )
        if expect.reason is not None and not any(expect.reason in r for r in reasons):
            differences.append(
                f"call {case.call.name}: no reason contains {expect.reason!r}; "
                f"reasons: {reasons or ['none']}"
            )
        if expect.rule is not None:
            decided = actions.decision(case.call.name)
            ids = set((decided.rule or "").split("+")) if decided else set()
            if expect.rule not in ids and not any(expect.rule in r for r in reasons):
                differences.append(
                    f"call {case.call.name}: expected rule {expect.rule} to decide; "
                    f"decision: {blocked_reason(case.call.name)}"
                )
    elif expect.decision is not None or expect.reason is not None:
        differences.append("expect.decision and expect.reason need a 'call' to decide")
    return differences


def _call_problems(
    call: CallSpec, policy: Policy, actions: AllowedActions, session: Session
) -> list[str]:
    allowed = actions.tool(call.name)
    if allowed is None:
        decision = actions.decision(call.name)
        reason = decision.reason if decision else "not a tool of the request"
        return [f"{call.name}: not in the allowed set ({reason})"]
    validator = jsonschema.Draft202012Validator(allowed.parameters)
    problems = [
        f"{call.name}: arguments do not match the allowed schema: {error.message}"
        for error in validator.iter_errors(call.arguments)
    ]
    return problems + policy.check_call(call.name, call.arguments, session)


def _read_test_file(path: Path) -> tuple[Any, PolicyTestFile]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(
            f"cannot read test file: {err.strerror}", source=str(path)
        ) from err
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise PolicyError(
            f"invalid YAML: {err.problem or err.context}",
            source=str(path),
            line=mark.line + 1 if mark else None,
        ) from err
    try:
        spec = PolicyTestFile.model_validate(_plain(document))
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        raise PolicyError(
            f"invalid test file at {dotted}: {first['msg']}",
            source=str(path),
            line=_line(document, *loc),
        ) from err
    return document, spec


def _read_tools(tools: str | list[dict[str, Any]], test_file: Path) -> list[Any]:
    if isinstance(tools, list):
        return tools
    path = test_file.parent / tools
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PolicyError(
            f"cannot read the tools file {path}: {err}", source=str(test_file)
        ) from err
    if isinstance(body, dict):
        body = body.get("tools", [])
    if not isinstance(body, list):
        raise PolicyError(
            f"the tools file {path} must hold a tools list or a request body",
            source=str(test_file),
        )
    return body


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(key): _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def _line(document: Any, *loc: Any) -> int | None:
    node, line = document, None
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif (
            isinstance(node, CommentedSeq)
            and isinstance(part, int)
            and part < len(node)
        ):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line
