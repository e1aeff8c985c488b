"""The versioned JSON Schema of the audit events, and a validator for it.

The schema file ``schema/events.v1.json`` ships inside the package. Each
event names its version in ``schema_version``; version 1 may gain optional
fields, and anything else (a field renamed, removed or changing meaning)
makes a version 2 file beside it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

__all__ = ["EVENT_NAMES", "event_schema", "event_validator", "validation_errors"]

EVENT_NAMES = (
    "decode_step",
    "blocked_mass_alert",
    "request_completed",
    "proxy_request",
)


@cache
def event_schema(version: int = 1) -> dict[str, Any]:
    """Return the JSON Schema of audit events of ``version``."""
    path = resources.files("guardrail.audit") / "schema" / f"events.v{version}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ValueError(
            f"no audit event schema for version {version}; known: 1"
        ) from err
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def event_validator(version: int = 1) -> jsonschema.protocols.Validator:
    schema = event_schema(version)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def validation_errors(event: dict[str, Any]) -> list[str]:
    """Return the schema violations of one event, each with its JSON path."""
    version = event.get("schema_version", 1)
    if not isinstance(version, int):
        return [f"$.schema_version: expected an integer, got {version!r}"]
    try:
        validator = event_validator(version)
    except ValueError as err:
        return [f"$.schema_version: {err}"]
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator.iter_errors(event), key=lambda e: e.json_path)
    ]
