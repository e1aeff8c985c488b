"""Argument constraints: which JSON Schema keywords a policy may add, and how
they narrow a tool's own schema.

A constraint can only narrow. Bounds combine to the tighter one, ``enum``
values must also be valid under the tool's schema, and where two keywords
cannot be merged (two ``pattern`` values) both are kept under ``allOf``, which
the grammar engine intersects. Keywords outside this table are rejected at
load time instead of being ignored, because an ignored constraint is a hole.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

__all__ = [
    "SUPPORTED_KEYWORDS",
    "ConstraintProblem",
    "check_constraint",
    "narrow_parameters",
    "narrow_property",
]

_ANY = {"enum", "const"}
SUPPORTED_KEYWORDS: dict[str, frozenset[str]] = {
    "string": frozenset({"pattern", "minLength", "maxLength", "format"} | _ANY),
    "integer": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
        | _ANY
    ),
    "array": frozenset({"minItems", "maxItems"} | _ANY),
    "boolean": frozenset(_ANY),
    "object": frozenset(_ANY),
    "null": frozenset(_ANY),
}
SUPPORTED_KEYWORDS["number"] = SUPPORTED_KEYWORDS["integer"]

# Formats the grammar engine (llguidance 1.7) can enforce token by token.
SUPPORTED_FORMATS = frozenset(
    {
        "date-time",
        "time",
        "date",
        "duration",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "uuid",
        "uri",
    }
)

_UPPER = {"maximum", "exclusiveMaximum", "maxLength", "maxItems"}
_LOWER = {"minimum", "exclusiveMinimum", "minLength", "minItems"}
_NON_NEGATIVE_INT = {"minLength", "maxLength", "minItems", "maxItems"}


class ConstraintProblem(ValueError):
    """A constraint that cannot apply; ``keyword`` is the offending key or None."""

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


def _types_of(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if declared is None:
        return list(SUPPORTED_KEYWORDS)
    if isinstance(declared, str):
        return [declared]
    return [str(item) for item in declared]


def check_constraint(
    constraint: Mapping[str, Any], property_schema: Mapping[str, Any]
) -> None:
    """Raise :class:`ConstraintProblem` if ``constraint`` cannot narrow the property.

    Checks that every keyword is supported for the property's type, that
    values have the right JSON type, that a pattern compiles, and that
    ``enum``/``const`` values are valid under the tool's own schema.
    """
    if not isinstance(constraint, Mapping):
        raise ConstraintProblem(
            f"expected a mapping of JSON Schema keywords, got {constraint!r}"
        )

    types = _types_of(property_schema)
    allowed = frozenset().union(*(SUPPORTED_KEYWORDS.get(t, _ANY) for t in types))
    for keyword, value in constraint.items():
        if keyword not in allowed:
            supported = ", ".join(sorted(allowed))
            known = _is_known(keyword)
            fit = "is not supported" if known else "is not a known keyword"
            close = difflib.get_close_matches(keyword, sorted(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close and not known else ""
            raise ConstraintProblem(
                f"keyword {keyword!r} {fit} for an argument of type "
                f"{'/'.join(types)}.{hint} Supported here: {supported}",
                keyword,
            )
        _check_value(keyword, value, property_schema)

    if _pinned_types(property_schema, constraint) == []:
        keywords = ", ".join(k for k in constraint if k in _KEYWORD_TYPES)
        raise ConstraintProblem(
            f"keywords {keywords} apply to different JSON types, so no value "
            "satisfies them all; keep the keywords of one type"
        )


def _is_known(keyword: str) -> bool:
    return any(keyword in keywords for keywords in SUPPORTED_KEYWORDS.values()) or (
        keyword in {"uniqueItems", "items", "properties", "not", "anyOf", "oneOf"}
    )


def _check_value(keyword: str, value: Any, property_schema: Mapping[str, Any]) -> None:
    if keyword in _NON_NEGATIVE_INT:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConstraintProblem(
                f"{keyword} must be a non-negative integer, got {value!r}", keyword
            )
    elif keyword in _UPPER | _LOWER | {"multipleOf"}:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConstraintProblem(
                f"{keyword} must be a number, got {value!r}", keyword
            )
    elif keyword == "pattern":
        if not isinstance(value, str):
            raise ConstraintProblem(f"pattern must be a string, got {value!r}", keyword)
        try:
            re.compile(value)
        except re.error as err:
            raise ConstraintProblem(
                f"pattern {value!r} is not a valid regular expression: {err}", keyword
            ) from err
    elif keyword == "format":
        if value not in SUPPORTED_FORMATS:
            raise ConstraintProblem(
                f"format {value!r} cannot be enforced; supported formats: "
                f"{', '.join(sorted(SUPPORTED_FORMATS))}",
                keyword,
            )
    elif keyword == "enum":
        if not isinstance(value, list) or not value:
            raise ConstraintProblem(
                f"enum must be a non-empty list, got {value!r}", keyword
            )
        for item in value:
            _check_instance(keyword, item, property_schema)
    elif keyword == "const":
        _check_instance(keyword, value, property_schema)


def _check_instance(
    keyword: str, value: Any, property_schema: Mapping[str, Any]
) -> None:
    try:
        jsonschema.validate(value, dict(property_schema))
    except jsonschema.ValidationError as err:
        raise ConstraintProblem(
            f"{keyword} value {value!r} is not valid for the tool's own schema: "
            f"{err.message}",
            keyword,
        ) from err


def narrow_property(
    property_schema: Mapping[str, Any], constraint: Mapping[str, Any]
) -> dict[str, Any]:
    """Return the property schema narrowed by an already checked constraint."""
    merged = copy.deepcopy(dict(property_schema))
    extra: list[dict[str, Any]] = []

    for keyword, value in constraint.items():
        current = merged.get(keyword)
        if current is None:
            merged[keyword] = copy.deepcopy(value)
        elif keyword in _UPPER:
            merged[keyword] = min(current, value)
        elif keyword in _LOWER:
            merged[keyword] = max(current, value)
        elif keyword == "enum":
            merged[keyword] = [item for item in current if item in value]
        else:
            extra.append({keyword: copy.deepcopy(value)})

    if extra:
        merged["allOf"] = [*merged.get("allOf", []), *extra]

    pinned = _pinned_types(property_schema, constraint)
    if pinned is not None:
        merged["type"] = pinned[0] if len(pinned) == 1 else pinned
    return merged


# JSON Schema's type-specific keywords ignore values of other types: without a
# pinned type, `maximum: 100` lets the string "5000" through an argument whose
# schema leaves the type open.
_KEYWORD_TYPES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
        ("integer", "number"),
    ),
    **dict.fromkeys(("pattern", "minLength", "maxLength", "format"), ("string",)),
    **dict.fromkeys(("minItems", "maxItems"), ("array",)),
}


def _pinned_types(
    property_schema: Mapping[str, Any], constraint: Mapping[str, Any]
) -> list[str] | None:
    """Return the types a constrained property is limited to, or None if any."""
    families = [_KEYWORD_TYPES[k] for k in constraint if k in _KEYWORD_TYPES]
    if not families:
        return None

    declared = property_schema.get("type")
    if declared is None:
        candidates = ["integer", "number", "string", "array"]
    elif isinstance(declared, str):
        candidates = [declared]
    else:
        candidates = [str(item) for item in declared]

    kept = [t for t in candidates if all(t in family for family in families)]
    if "number" in kept and "integer" in kept:
        kept.remove("integer")
    return kept


def narrow_parameters(
    parameters: Mapping[str, Any] | None,
    constraints: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Return a tool's parameter schema with policy constraints applied.

    An object schema that does not say ``additionalProperties`` gets
    ``false``: only declared arguments can be generated, as in OpenAI's
    strict mode.
    """
    schema = copy.deepcopy(dict(parameters or {"type": "object", "properties": {}}))
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    schema.setdefault("additionalProperties", False)

    properties = schema["properties"]
    for argument, constraint in constraints.items():
        properties[argument] = narrow_property(properties[argument], constraint)
    return schema
