"""CEL conditions: compile once at load time, evaluate against the session.

Conditions are written in CEL and run by the ``common-expression-language``
package (Python bindings of the Rust CEL interpreter). CEL does not coerce
between types (``1 + 2.0`` is an error), cannot loop forever and cannot
reach the file system or network, which is why policy files use it instead
of Python.

Compilation checks syntax, and also that every variable and function the
expression names exists, because the interpreter reports an unknown name
only when the expression runs, and such a rule would then deny at every
step. The variables are documented in ``docs/policy.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

__all__ = [
    "CALL_VARIABLES",
    "FUNCTIONS",
    "SESSION_VARIABLES",
    "Condition",
    "ConditionError",
    "compile_condition",
    "new_context",
]

# Variables a condition may read at every step.
SESSION_VARIABLES = frozenset(
    {"calls", "counts", "step", "tainted", "tool", "request", "last"}
)
# Variables bound only when a generated call is checked.
CALL_VARIABLES = frozenset({"args"})

# Functions the installed interpreter (common-expression-language 0.10)
# implements; tests/policy/test_conditions.py runs each of them, so a
# library upgrade that drops one fails there. Names of operators
# (``_&&_``, ``!_``, ``@not_strictly_false``) are internal and always allowed.
FUNCTIONS = frozenset(
    {
        "size",
        "matches",
        "startsWith",
        "endsWith",
        "contains",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "type",
        "dyn",
        "timestamp",
        "duration",
    }
)
# Type names that appear as variables in expressions such as ``type(x) == int``.
_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type"}
)
_MACRO_VARIABLE = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)


class ConditionError(ValueError):
    """A condition that does not compile, or names an unknown variable."""


@dataclass(frozen=True)
class Condition:
    """A compiled CEL expression and the session variables it reads.

    ``uses_args`` conditions depend on the generated call's arguments, so
    they cannot decide the mask; they are checked after generation.
    ``uses_tool`` conditions read the name of the tool being decided and
    are evaluated once per tool; the others once per step.
    """

    source: str
    program: Any
    variables: frozenset[str]

    @property
    def uses_args(self) -> bool:
        return "args" in self.variables

    @property
    def uses_tool(self) -> bool:
        return "tool" in self.variables

    def evaluate(self, context: Any) -> Any:
        """Run the expression; raise :class:`ConditionError` on any failure.

        ``context`` is a :class:`cel.Context` from :func:`new_context` (or
        a plain mapping). The interpreter raises several built-in exception
        types (for type errors, missing keys, division by zero, indexes out
        of range), and each of them becomes a ConditionError here.
        """
        try:
            return self.program.execute(context)
        except Exception as err:
            raise ConditionError(_first_line(str(err)) or type(err).__name__) from err

    def evaluate_bool(self, context: Any) -> bool:
        """Run the expression and require a boolean result."""
        value = self.evaluate(context)
        if not isinstance(value, bool):
            raise ConditionError(
                f"condition returned {type(value).__name__} {value!r}, expected "
                "a bool; compare the value, for example 'x == 1'"
            )
        return value


def compile_condition(
    expression: str, *, allowed: frozenset[str] = SESSION_VARIABLES | CALL_VARIABLES
) -> Condition:
    """Compile ``expression`` and check the names it uses.

    Raises :class:`ConditionError` for a syntax error (with the column the
    interpreter reports), a variable outside ``allowed`` and a function the
    interpreter does not implement, with a did-you-mean hint.
    """
    import difflib

    if not isinstance(expression, str) or not expression.strip():
        raise ConditionError("condition is empty; write a CEL expression or remove it")
    try:
        program = cel.compile(expression)
    except ValueError as err:
        raise ConditionError(_syntax_message(str(err))) from err

    references = program.references()
    bound = set(_MACRO_VARIABLE.findall(expression))
    variables = {
        name
        for name in references.get("variables", [])
        if name not in bound and name not in _TYPE_NAMES
    }
    for name in sorted(variables):
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConditionError(
                f"unknown variable {name!r} in condition.{hint} Variables: "
                f"{', '.join(sorted(allowed))}"
            )

    for name in references.get("functions", []):
        if _is_operator(name) or name in FUNCTIONS:
            continue
        close = difflib.get_close_matches(name, sorted(FUNCTIONS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConditionError(
            f"function {name!r} is not available in CEL here.{hint} Functions: "
            f"{', '.join(sorted(FUNCTIONS))}, and the macros has, all, exists, "
            "exists_one, map, filter"
        )

    return Condition(source=expression, program=program, variables=frozenset(variables))


def new_context(variables: Mapping[str, Any]) -> Any:
    """Return an interpreter context holding ``variables``.

    A context converts its variables to CEL values once and reuses them for
    every expression run against it (about 10x faster than passing a dict
    per run, measured with 50 calls in the history). Contexts are not
    thread-safe, so each evaluation builds its own.
    """
    return cel.Context(variables=dict(variables))


def _is_operator(name: str) -> bool:
    return name.startswith(("_", "@", "!"))


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def _syntax_message(message: str) -> str:
    """Reduce the interpreter's parse error to its position and problem."""
    match = re.search(r"<input>:(\d+):(\d+): (.*)", message)
    if match is None:
        return f"invalid CEL: {_first_line(message)}"
    line, column, problem = match.groups()
    return f"invalid CEL at line {line}, column {column}: {problem}"
