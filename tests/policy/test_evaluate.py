"""Policy semantics: default deny, forbid wins, failing conditions deny,
budgets, phases, taint, shadow rules, tool_choice and post-validation."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.loader import load_policy_text
from guardrail.policy.model import Policy
from guardrail.session import session_from_request

TOOLS: dict[str, Any] = {
    "search": {"query": {"type": "string"}},
    "refund": {
        "order_id": {"type": "string"},
        "amount": {"type": "number"},
    },
    "send": {"to": {"type": "string"}},
    "fetch": {"url": {"type": "string"}},
}


def policy(text: str) -> Policy:
    return load_policy_text("policy: t\n" + text)


def allowed(policy: Policy, request: Any) -> set[str]:
    session = session_from_request(request)
    return set(evaluate_policy(policy, request, session).tool_names)


# Semantics table: (policy body, expected allowed set) at the first step.
SEMANTICS = [
    ("tools: {}", set()),
    ("default: allow", {"search", "refund", "send", "fetch"}),
    ("tools: {search: {allow: true}}", {"search"}),
    ("tools: {search: {allow: false}}", set()),
    ("default: allow\ntools: {search: {allow: false}}", {"refund", "send", "fetch"}),
    (
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: f, effect: forbid, tools: [search]}",
        set(),
    ),
    (
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: f, effect: forbid, tools: [search], when: 'step > 5'}",
        {"search"},
    ),
    (
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: f, effect: forbid, tools: [search], when: 'counts.nope > 0'}",
        set(),
    ),
    (
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: p, effect: permit, tools: [refund], when: 'counts.nope > 0'}",
        {"search"},
    ),
    (
        "rules:\n  - {id: p, effect: permit, tools: ['s*']}",
        {"search", "send"},
    ),
    (
        "groups: {outbound: [send, fetch]}\n"
        "rules:\n  - {id: p, effect: permit, tools: ['group:outbound']}",
        {"send", "fetch"},
    ),
    (
        "default: allow\nrules:\n"
        "  - {id: f, effect: forbid, tools: ['*'], when: \"tool == 'refund'\"}",
        {"search", "send", "fetch"},
    ),
    (
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: s, effect: forbid, tools: [search], mode: shadow}",
        {"search"},
    ),
]


@pytest.mark.parametrize(("body", "expected"), SEMANTICS)
def test_semantics_table(make_request, body: str, expected: set[str]) -> None:
    request = make_request(TOOLS)

    assert allowed(policy(body), request) == expected


def test_erroring_condition_denies_even_with_other_permits(make_request) -> None:
    """A permit whose condition fails blocks the tool although another permits it."""
    loaded = policy(
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: broken, effect: permit, tools: [search], when: 'counts.x == 1'}"
    )
    request = make_request(TOOLS)

    with capture_logs() as logs:
        actions = evaluate_policy(loaded, request, session_from_request(request))

    assert "search" not in actions.tool_names
    decision = actions.decision("search")
    assert decision is not None
    assert decision.rule == "broken"
    assert "condition failed" in decision.reason
    events = [entry for entry in logs if entry["event"] == "condition_failed"]
    assert len(events) == 1
    assert events[0]["rule"] == "broken"
    assert events[0]["tool"] == "search"


def test_rule_order_does_not_change_outcome(make_request) -> None:
    rules = [
        "  - {id: a, effect: permit, tools: ['*']}",
        "  - {id: b, effect: forbid, tools: [refund], when: 'step == 0'}",
        "  - {id: c, effect: permit, tools: [send], arguments: {to: {maxLength: 5}}}",
        "  - {id: d, effect: forbid, tools: [fetch], when: 'counts.x > 0'}",
    ]
    request = make_request(TOOLS)
    outcomes = set()
    for order in itertools.permutations(rules):
        loaded = policy("rules:\n" + "\n".join(order))
        actions = evaluate_policy(loaded, request, session_from_request(request))
        outcomes.add(
            (
                actions.cache_key(),
                tuple((d.tool, d.allowed, d.rule) for d in actions.decisions),
            )
        )

    assert len(outcomes) == 1


def test_union_of_permits_becomes_any_of(make_request) -> None:
    loaded = policy(
        "rules:\n"
        "  - {id: small, effect: permit, tools: [refund], "
        "arguments: {amount: {maximum: 100}}}\n"
        "  - {id: big, effect: permit, tools: [refund], "
        "when: \"request.user == 'boss'\", arguments: {amount: {maximum: 500}}}"
    )
    agent = make_request(TOOLS)
    boss = make_request(TOOLS, user="boss")

    agent_actions = evaluate_policy(loaded, agent, session_from_request(agent))
    boss_actions = evaluate_policy(loaded, boss, session_from_request(boss))

    agent_schema = agent_actions.tool("refund").parameters
    boss_schema = boss_actions.tool("refund").parameters
    assert agent_schema["properties"]["amount"]["maximum"] == 100
    assert len(boss_schema["anyOf"]) == 2
    assert boss_actions.decision("refund").rule == "big+small"


def test_unconstrained_permit_wins_the_union(make_request) -> None:
    loaded = policy(
        "rules:\n"
        "  - {id: a, effect: permit, tools: [refund], "
        "arguments: {amount: {maximum: 100}}}\n"
        "  - {id: b, effect: permit, tools: [refund]}"
    )
    request = make_request(TOOLS)
    actions = evaluate_policy(loaded, request, session_from_request(request))

    assert "maximum" not in json.dumps(actions.tool("refund").parameters)


BUDGET = """
tools: {search: {allow: true}, refund: {allow: true}}
budgets:
  - {id: two-calls, tools: [search, refund], max: 2}
"""


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        (0, {"search", "refund"}),
        (1, {"search", "refund"}),
        (2, set()),
        (3, set()),
    ],
)
def test_budget_counts_calls_of_the_group(
    make_request, calls: int, expected: set[str]
) -> None:
    history = [("search" if i % 2 else "refund", {}, "ok") for i in range(calls)]
    request = make_request(TOOLS, history)

    assert allowed(policy(BUDGET), request) == expected


def test_last_budget_call_disables_parallel(make_request) -> None:
    request = make_request(TOOLS, [("search", {}, "ok")])
    actions = evaluate_policy(policy(BUDGET), request, session_from_request(request))

    assert actions.parallel_calls is False


def test_budget_counts_calls_within_one_turn(make_request) -> None:
    loaded = policy(BUDGET)
    request = make_request(TOOLS, [("search", {}, "ok")])
    session = session_from_request(request)

    first = loaded.check_calls([("search", {})], session)
    both = loaded.check_calls([("search", {}), ("refund", {})], session)

    assert first == []
    assert len(both) == 1
    assert both[0].startswith("calls[1] refund: budget two-calls is used up")


PHASE = """
tools: {search: {allow: true}, refund: {allow: true}}
phases:
  - id: refund-after-search
    tools: [refund]
    after: search
    same_arguments: {order_id: query}
"""


@pytest.mark.parametrize(
    ("history", "refund_allowed"),
    [
        ([], False),
        ([("search", {"query": "O-1"}, None)], False),
        ([("search", {"query": "O-1"}, {"error": "not found"})], False),
        ([("search", {"query": "O-1"}, "found")], True),
        ([("search", {"query": "O-1"}, {"error": None, "order": 1})], True),
        ([("search", {}, "found")], False),
    ],
)
def test_phase_needs_earlier_success(
    make_request, history: list[Any], refund_allowed: bool
) -> None:
    request = make_request(TOOLS, history)

    assert ("refund" in allowed(policy(PHASE), request)) is refund_allowed


def test_phase_error_flag_on_tool_message_counts(make_request) -> None:
    request = make_request(
        TOOLS,
        [("search", {"query": "O-1"}, "found")],
        tool_messages={0: {"is_error": True}},
    )

    assert "refund" not in allowed(policy(PHASE), request)


def test_phase_same_arguments_become_an_enum(make_request) -> None:
    history = [
        ("search", {"query": "O-2"}, "found"),
        ("search", {"query": "O-1"}, "found"),
        ("search", {"query": "O-3"}, {"error": "no"}),
    ]
    request = make_request(TOOLS, history)
    actions = evaluate_policy(policy(PHASE), request, session_from_request(request))

    schema = actions.tool("refund").parameters
    assert schema["properties"]["order_id"]["enum"] == ["O-1", "O-2"]


def test_phase_same_arguments_checked_after_generation(make_request) -> None:
    loaded = policy(PHASE)
    request = make_request(TOOLS, [("search", {"query": "O-1"}, "found")])
    session = session_from_request(request)

    assert loaded.check_call("refund", {"order_id": "O-1"}, session) == []
    assert loaded.check_call("refund", {"order_id": "O-9"}, session) != []


TAINT = """
untrusted: [fetch]
sensitive: [send, refund]
tools: {search: {allow: true}, send: {allow: true}, fetch: {allow: true},
        refund: {allow: true}}
rules:
  - id: internal-mail
    effect: permit
    tools: [send]
    allow_tainted: true
    allow_lists:
      to: {email_domains: [example.com]}
"""


def test_taint_blocks_sensitive_tools(make_request) -> None:
    clean = make_request(TOOLS, [("search", {}, "ok")])
    tainted = make_request(TOOLS, [("fetch", {"url": "x"}, "<html>")])

    assert allowed(policy(TAINT), clean) == {"search", "send", "fetch", "refund"}
    assert allowed(policy(TAINT), tainted) == {"search", "send", "fetch"}


def test_taint_keeps_only_allow_tainted_permits(make_request) -> None:
    loaded = policy(TAINT)
    request = make_request(TOOLS, [("fetch", {"url": "x"}, "<html>")])
    session = session_from_request(request)
    actions = evaluate_policy(loaded, request, session)

    assert "pattern" in json.dumps(actions.tool("send").parameters)
    assert loaded.check_call("send", {"to": "bob@example.com"}, session) == []
    assert loaded.check_call("send", {"to": "eve@evil.example"}, session) != []


def test_taint_needs_a_result(make_request) -> None:
    request = make_request(TOOLS, [("fetch", {"url": "x"}, None)])

    assert "refund" in allowed(policy(TAINT), request)


def test_untrusted_flag_on_tool_message_taints(make_request) -> None:
    request = make_request(
        TOOLS, [("search", {}, "ok")], tool_messages={0: {"untrusted": True}}
    )
    actions = evaluate_policy(policy(TAINT), request, session_from_request(request))

    assert actions.tainted is True
    assert "refund" not in actions.tool_names


def test_taint_with_default_allow_still_blocks(make_request) -> None:
    loaded = policy("default: allow\nuntrusted: [fetch]\nsensitive: [refund]")
    request = make_request(TOOLS, [("fetch", {}, "page")])

    assert "refund" not in allowed(loaded, request)


def test_condition_on_args_is_decided_after_generation(make_request) -> None:
    loaded = policy(
        "tools: {refund: {allow: true}}\nrules:\n"
        "  - {id: cap, effect: forbid, tools: [refund], when: 'args.amount > 50.0'}"
    )
    request = make_request(TOOLS)
    session = session_from_request(request)

    assert "refund" in allowed(loaded, request)
    assert loaded.check_call("refund", {"amount": 10.0}, session) == []
    problems = loaded.check_call("refund", {"amount": 80.0}, session)
    assert problems[0].startswith("refund: forbidden because args.amount > 50.0")


def test_condition_on_missing_arg_denies_the_call(make_request) -> None:
    loaded = policy(
        "tools: {refund: {allow: true}}\nrules:\n"
        "  - {id: cap, effect: forbid, tools: [refund], when: 'args.amount > 50.0'}"
    )
    request = make_request(TOOLS)

    problems = loaded.check_call("refund", {}, session_from_request(request))

    assert "condition failed" in problems[0]


def test_shadow_rule_is_reported_not_applied(make_request) -> None:
    loaded = policy(
        "tools: {search: {allow: true}}\nrules:\n"
        "  - {id: trial, effect: forbid, tools: [search], mode: shadow}"
    )
    request = make_request(TOOLS)

    with capture_logs() as logs:
        actions = evaluate_policy(loaded, request, session_from_request(request))

    decision = actions.decision("search")
    assert decision.allowed is True
    assert decision.shadow_allowed is False
    assert decision.shadow_rule == "trial"
    assert [e["event"] for e in logs] == ["shadow_decision_differs"]


def test_tool_choice_narrows_never_widens(make_request) -> None:
    loaded = policy("tools: {search: {allow: true}}")
    named = make_request(
        TOOLS, tool_choice={"type": "function", "function": {"name": "refund"}}
    )
    actions = evaluate_policy(loaded, named, session_from_request(named))

    assert actions.mode == "required"
    assert actions.tool_names == ()


def test_request_metadata_is_visible_to_conditions(make_request) -> None:
    loaded = policy(
        "rules:\n"
        "  - id: tenant\n    effect: permit\n    tools: [search]\n"
        "    when: \"request.tenant == 'acme' && "
        "request.user_domain == 'acme.example'\""
    )
    acme = make_request(TOOLS, user="ann@acme.example", metadata={"tenant": "acme"})
    other = make_request(TOOLS, user="ann@acme.example", metadata={"tenant": "x"})

    assert allowed(loaded, acme) == {"search"}
    assert allowed(loaded, other) == set()


def test_headers_override_body_metadata(make_request) -> None:
    loaded = policy(
        "rules:\n  - {id: u, effect: permit, tools: [search], "
        "when: \"request.user == 'svc'\"}"
    )
    request = make_request(TOOLS, user="client-claims-this")
    session = session_from_request(request, headers={"X-Guardrail-User": "svc"})

    actions = evaluate_policy(loaded, request, session)

    assert actions.tool_names == ("search",)


def test_dynamic_allow_list_empty_grants_nothing(make_request) -> None:
    loaded = policy(
        "rules:\n  - id: own\n    effect: permit\n    tools: [send]\n"
        "    allow_lists:\n      to: {email_domains_from: 'request.user_domain'}"
    )
    anonymous = make_request(TOOLS)
    alice = make_request(TOOLS, user="alice@example.com")

    assert allowed(loaded, anonymous) == set()
    assert allowed(loaded, alice) == {"send"}


def test_dynamic_allow_list_of_wrong_type_denies(make_request) -> None:
    loaded = policy(
        "rules:\n  - id: own\n    effect: permit\n    tools: [send]\n"
        "    allow_lists:\n      to: {email_domains_from: 'step'}"
    )
    request = make_request(TOOLS)
    actions = evaluate_policy(loaded, request, session_from_request(request))

    assert "must return a string or a list" in actions.decision("send").reason


def test_constraint_on_undeclared_argument_grants_nothing(make_request) -> None:
    loaded = policy("tools: {search: {allow: true, arguments: {nope: {maxLength: 3}}}}")
    request = make_request(TOOLS)

    assert allowed(loaded, request) == set()


def test_old_policy_keeps_its_meaning(make_request, policies_dir) -> None:
    from guardrail.policy.loader import load_policy

    loaded = load_policy(policies_dir / "support-agent.yaml")
    tools = {
        "search_orders": {"customer_id": {"type": "string"}},
        "refund_order": {
            "order_id": {"type": "string"},
            "amount": {"type": "number"},
            "reason": {"type": "string"},
        },
        "delete_customer": {"customer_id": {"type": "string"}},
    }
    request = make_request(tools)
    actions = evaluate_policy(loaded, request, session_from_request(request))

    assert actions.tool_names == ("search_orders", "refund_order")
    refund = actions.tool("refund_order").parameters["properties"]
    assert refund["amount"]["maximum"] == 100
    assert refund["reason"]["maxLength"] == 200
    search = actions.tool("search_orders").parameters["properties"]
    assert search["customer_id"]["pattern"] == "^C[0-9]{6}$"
