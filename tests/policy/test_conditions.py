"""CEL conditions: compile-time name checks and runtime failures."""

from __future__ import annotations

import pytest

from guardrail.policy.conditions import (
    FUNCTIONS,
    ConditionError,
    compile_condition,
    new_context,
)


def test_condition_reads_session_variables() -> None:
    condition = compile_condition("counts.refund_order < 1 && step >= 1")
    context = new_context({"counts": {"refund_order": 0}, "step": 2})

    assert condition.evaluate_bool(context) is True
    assert condition.variables == {"counts", "step"}
    assert condition.uses_args is False


def test_condition_on_args_is_marked() -> None:
    condition = compile_condition("args.amount <= 100")

    assert condition.uses_args is True


def test_macro_variables_are_not_free_variables() -> None:
    condition = compile_condition(
        "calls.exists(c, c.name == 'lookup_order') && calls.all(x, x.ok)"
    )

    assert condition.variables == {"calls"}


def test_syntax_error_names_the_column() -> None:
    with pytest.raises(ConditionError, match=r"invalid CEL at line 1, column 9"):
        compile_condition("step >= ")


def test_unknown_variable_suggests_a_name() -> None:
    with pytest.raises(ConditionError, match=r"unknown variable 'cals'.*'calls'"):
        compile_condition("cals.size() > 0")


def test_unknown_function_is_rejected_at_compile_time() -> None:
    with pytest.raises(ConditionError, match=r"function 'lowerAscii' is not available"):
        compile_condition("request.user.lowerAscii() == 'a'")


def test_empty_condition_is_rejected() -> None:
    with pytest.raises(ConditionError, match="empty"):
        compile_condition("  ")


@pytest.mark.parametrize(
    ("expression", "variables", "message"),
    [
        ("counts.refund_order < 1", {"counts": {}}, "refund_order"),
        ("args.amount + 1 > 0", {"args": {"amount": 1.5}}, "float"),
        ("step / 0 == 1", {"step": 1}, "division"),
        ("calls[3].ok", {"calls": []}, "index"),
    ],
)
def test_runtime_failure_raises_condition_error(
    expression: str, variables: dict[str, object], message: str
) -> None:
    condition = compile_condition(expression)

    with pytest.raises(ConditionError, match=message):
        condition.evaluate(new_context(variables))


def test_non_boolean_result_is_an_error() -> None:
    condition = compile_condition("step")

    with pytest.raises(ConditionError, match="expected a bool"):
        condition.evaluate_bool(new_context({"step": 3}))


_FUNCTION_SAMPLES = {
    "size": "size('abc') == 3",
    "matches": "'O-12'.matches('^O-[0-9]+$')",
    "startsWith": "'abc'.startsWith('a')",
    "endsWith": "'abc'.endsWith('c')",
    "contains": "'abc'.contains('b')",
    "int": "int('7') == 7",
    "uint": "uint(7) == 7u",
    "double": "double(1) == 1.0",
    "string": "string(7) == '7'",
    "bytes": "bytes('a') == b'a'",
    "type": "type(1) == int",
    "dyn": "dyn(1) == 1",
    "timestamp": (
        "timestamp('2026-01-01T00:00:00Z') > timestamp('2025-01-01T00:00:00Z')"
    ),
    "duration": "duration('1h') > duration('1m')",
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_allowed_function_runs(name: str) -> None:
    """Each function the compiler allows works in the installed interpreter."""
    condition = compile_condition(_FUNCTION_SAMPLES[name])

    assert condition.evaluate_bool(new_context({})) is True


def test_function_samples_cover_the_allowed_set() -> None:
    assert set(_FUNCTION_SAMPLES) == set(FUNCTIONS)
