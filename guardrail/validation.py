"""Post-validation: check generated calls again, independently of the mask.

The mask makes a forbidden call impossible to generate. This check reads the
finished text with a JSON parser and jsonschema, so that a defect in the
grammar, or an engine that ignored the mask, is caught before a call is
passed on.

NOTE: numbers are compared as Python floats, so a value that differs from a
bound only past float precision (``100.00000000000000001`` against
``maximum: 100``) passes here; the grammar compares the digits exactly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema

from guardrail.grammar.formats import ParsedOutput
from guardrail.policy.evaluate import AllowedActions

if TYPE_CHECKING:
    from guardrail.policy.model import Policy
    from guardrail.session import Session

__all__ = ["ArgumentValidator", "ValidationResult", "validate_output"]


def _ecma_pattern(pattern: str) -> str:
    """Translate ``$`` outside character classes to Python's ``\\Z``.

    JSON Schema patterns follow ECMA-262, where ``$`` matches only at the end
    of the string; Python's ``$`` also matches before a final newline, which
    let ``"O-5521\\n"`` pass ``^O-[0-9]{4}$``.
    """
    out: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif char == "[":
            in_class = True
            out.append(char)
        elif char == "]":
            in_class = False
            out.append(char)
        elif char == "$" and not in_class:
            out.append(r"\Z")
        else:
            out.append(char)
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compiled_pattern(pattern: str) -> re.Pattern[str]:
    # ECMA-262 classes such as \d and \w are ASCII-only.
    return re.compile(_ecma_pattern(pattern), re.ASCII)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    del validator, schema
    if not isinstance(instance, str):
        return
    try:
        compiled = _compiled_pattern(pattern)
    except re.error as err:
        # Fail closed: a pattern Python cannot run cannot vouch for a value.
        yield jsonschema.ValidationError(
            f"pattern {pattern!r} cannot be checked: {err}"
        )
        return
    if not compiled.search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


ArgumentValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern}
)
"""Draft 2020-12 with ECMA-262 pattern semantics; use it with its format checker."""


@dataclass(frozen=True)
class ValidationResult:
    passed: bool
    errors: tuple[str, ...] = ()


def validate_output(
    output: ParsedOutput,
    actions: AllowedActions,
    *,
    policy: Policy | None = None,
    session: Session | None = None,
    complete: bool = True,
) -> ValidationResult:
    """Check every call of ``output`` against ``actions``.

    Fails on unparsable call text, a call in ``none`` mode, a missing call in
    ``required`` mode, a name not allowed at this step, more than one call
    when parallel calls are off, and arguments that break the narrowed schema.
    With ``policy`` and ``session``, the allowed calls also go through
    :meth:`Policy.check_calls`: conditions on arguments, allow-lists and
    budgets that the grammar cannot fully carry.

    ``complete`` False is for a turn cut off by the token limit: its end is
    expected to be unfinished, so only its complete calls are judged, and a
    missing or partial call is not a violation (the caller withholds it).
    """
    errors: list[str] = []
    if output.error is not None and complete:
        errors.append(f"malformed tool call: {output.error}")

    if actions.mode == "none" and output.calls:
        errors.append("a tool call was generated although tool_choice is 'none'")
    if complete and actions.mode == "required" and actions.tools and not output.calls:
        errors.append("no tool call was generated although one is required")
    if not actions.parallel_calls and len(output.calls) > 1:
        errors.append(f"{len(output.calls)} calls generated; parallel calls are off")

    for index, call in enumerate(output.calls):
        allowed = actions.tool(call.name)
        if allowed is None:
            errors.append(f"calls[{index}]: tool {call.name!r} is not allowed")
            continue
        validator = ArgumentValidator(
            allowed.parameters, format_checker=ArgumentValidator.FORMAT_CHECKER
        )
        for problem in validator.iter_errors(call.arguments):
            where = "".join(f"[{part!r}]" for part in problem.absolute_path)
            errors.append(
                f"calls[{index}] {call.name}: arguments{where}: {problem.message}"
            )

    if policy is not None and session is not None:
        # Calls of one turn count toward the budgets of the calls after them.
        for index, call in enumerate(output.calls):
            if actions.tool(call.name) is not None:
                problems = policy.check_call(call.name, call.arguments, session)
                errors.extend(f"calls[{index}] {problem}" for problem in problems)
            session = session.with_call(call.name, call.arguments)

    return ValidationResult(passed=not errors, errors=tuple(errors))
