"""Property: for random policies and histories, the allowed set is what a
plain evaluation of the rules decides, tool by tool and call by call.

The reference below evaluates each rule's condition as ordinary Python
over the history, without CEL and without the compiled policy. It then
applies the precedence the documentation states: a failing condition
denies, a forbid wins, then come budgets, phases and taint, then permits or
the default. The guard's result must match it, must not change when the rules
are shuffled, and must match a one-call-at-a-time check of each tool.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from chat_requests import build_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.loader import load_policy_text
from guardrail.session import session_from_request

TOOLS = ["t0", "t1", "t2", "t3"]


@dataclass(frozen=True)
class Step:
    tool: str
    outcome: str  # "ok", "error" or "pending"


@dataclass(frozen=True)
class Facts:
    history: tuple[Step, ...]
    user: str
    untrusted: tuple[str, ...]

    def count(self, tool: str) -> int:
        return sum(1 for step in self.history if step.tool == tool)

    def succeeded(self, tool: str) -> bool:
        return any(s.tool == tool and s.outcome == "ok" for s in self.history)

    @property
    def tainted(self) -> bool:
        return any(
            s.outcome != "pending" and _matches(self.untrusted, s.tool)
            for s in self.history
        )


class ConditionFailed(Exception):
    """The reference's stand-in for a CEL evaluation error."""


Reference = Callable[[Facts, str], bool]


def _failing(facts: Facts, tool: str) -> bool:
    raise ConditionFailed


def conditions() -> st.SearchStrategy[tuple[str | None, Reference]]:
    """Pairs of (CEL text, the same condition in Python)."""
    k = st.integers(min_value=0, max_value=3)
    name = st.sampled_from(TOOLS)
    return st.one_of(
        st.just((None, lambda facts, tool: True)),
        k.map(lambda n: (f"step >= {n}", lambda f, t: len(f.history) >= n)),
        st.tuples(name, k).map(
            lambda a: (f"counts.{a[0]} >= {a[1]}", lambda f, t: f.count(a[0]) >= a[1])
        ),
        name.map(
            lambda n: (
                f"calls.exists(c, c.name == '{n}' && c.ok)",
                lambda f, t: f.succeeded(n),
            )
        ),
        st.just(("tainted", lambda f, t: f.tainted)),
        st.just(("request.user == 'admin'", lambda f, t: f.user == "admin")),
        name.map(lambda n: (f"tool == '{n}'", lambda f, t: t == n)),
        st.just(("counts.missing > 0", _failing)),
    )


selectors = st.one_of(
    st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3, unique=True),
    st.sampled_from([["t*"], ["t[01]"], ["*"]]),
)


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    rules = []
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        text, reference = draw(conditions())
        effect = draw(st.sampled_from(["permit", "forbid"]))
        rules.append(
            {
                "id": f"r{index}",
                "effect": effect,
                "tools": draw(selectors),
                "when": text,
                "reference": reference,
                "mode": draw(st.sampled_from(["enforce", "enforce", "shadow"])),
                "allow_tainted": effect == "permit" and draw(st.booleans()),
            }
        )
    budgets = [
        {"id": f"b{i}", "tools": draw(selectors), "max": draw(st.integers(0, 3))}
        for i in range(draw(st.integers(min_value=0, max_value=2)))
    ]
    phases = [
        {
            "id": f"p{i}",
            "tools": [draw(st.sampled_from(TOOLS))],
            "after": draw(st.sampled_from(TOOLS)),
        }
        for i in range(draw(st.integers(min_value=0, max_value=2)))
    ]
    return {
        "default": draw(st.sampled_from(["deny", "allow"])),
        "untrusted": draw(st.lists(st.sampled_from(TOOLS), max_size=2, unique=True)),
        "sensitive": draw(st.lists(st.sampled_from(TOOLS), max_size=2, unique=True)),
        "rules": rules,
        "budgets": budgets,
        "phases": phases,
    }


histories = st.lists(
    st.builds(
        Step,
        tool=st.sampled_from(TOOLS),
        outcome=st.sampled_from(["ok", "ok", "error", "pending"]),
    ),
    max_size=5,
).map(tuple)


def _matches(patterns: Any, tool: str) -> bool:
    return any(fnmatchcase(tool, pattern) for pattern in patterns)


def reference_allows(spec: dict[str, Any], facts: Facts, tool: str) -> bool:
    """Decide ``tool`` by reading the rules one at a time, in plain Python."""
    rules = [
        rule
        for rule in spec["rules"]
        if rule["mode"] == "enforce" and _matches(rule["tools"], tool)
    ]
    holds: dict[str, bool] = {}
    for rule in rules:
        try:
            holds[rule["id"]] = rule["reference"](facts, tool)
        except ConditionFailed:
            return False
    if any(r["effect"] == "forbid" and holds[r["id"]] for r in rules):
        return False
    for budget in spec["budgets"]:
        if _matches(budget["tools"], tool):
            used = sum(1 for s in facts.history if _matches(budget["tools"], s.tool))
            if used >= budget["max"]:
                return False
    for phase in spec["phases"]:
        if tool in phase["tools"] and not facts.succeeded(phase["after"]):
            return False

    permits = [r for r in rules if r["effect"] == "permit" and holds[r["id"]]]
    sensitive = facts.tainted and _matches(spec["sensitive"], tool)
    if sensitive:
        return any(r["allow_tainted"] for r in permits)
    return bool(permits) or spec["default"] == "allow"


def policy_text(spec: dict[str, Any], order: list[int]) -> str:
    """Serialise ``spec`` as JSON, which is valid YAML, with rules in ``order``."""
    rules = []
    for index in order:
        rule = {k: v for k, v in spec["rules"][index].items() if k != "reference"}
        if rule["when"] is None:
            del rule["when"]
        if not rule["allow_tainted"]:
            del rule["allow_tainted"]
        rules.append(rule)
    document = {
        "policy": "random",
        "default": spec["default"],
        "untrusted": spec["untrusted"],
        "sensitive": spec["sensitive"],
        "rules": rules,
        "budgets": spec["budgets"],
        "phases": spec["phases"],
    }
    return json.dumps(document)


def request_for(history: tuple[Step, ...], user: str) -> Any:
    calls = []
    for step in history:
        result = {"ok": "done", "error": {"error": "failed"}, "pending": None}
        calls.append((step.tool, {}, result[step.outcome]))
    fields = {"user": user} if user else {}
    return build_request(dict.fromkeys(TOOLS), calls, **fields)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    spec=policies(),
    history=histories,
    user=st.sampled_from(["", "admin", "guest"]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_allowed_set_matches_plain_evaluation(
    spec: dict[str, Any], history: tuple[Step, ...], user: str, seed: int
) -> None:
    order = list(range(len(spec["rules"])))
    policy = load_policy_text(policy_text(spec, order))
    request = request_for(history, user)
    session = session_from_request(request)
    facts = Facts(history=history, user=user, untrusted=tuple(spec["untrusted"]))

    actions = evaluate_policy(policy, request, session)
    expected = {tool for tool in TOOLS if reference_allows(spec, facts, tool)}
    assert set(actions.tool_names) == expected

    one_at_a_time = {t for t in TOOLS if not policy.check_call(t, {}, session)}
    assert one_at_a_time == expected

    random.Random(seed).shuffle(order)
    shuffled = load_policy_text(policy_text(spec, order))
    again = evaluate_policy(shuffled, request, session)
    assert again.tool_names == actions.tool_names
    assert [d.rule for d in again.decisions] == [d.rule for d in actions.decisions]
