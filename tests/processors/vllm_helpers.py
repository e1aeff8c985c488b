"""Helpers shared by the vLLM test modules: guard specs and audit readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from guardrail.audit.events import validation_errors
from guardrail.spec import GuardSpec, SpecTool

WEATHER_TOOL = SpecTool(
    name="get_weather",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)


def weather_spec(
    request_id: str,
    *,
    tool_choice: Literal["none", "auto", "required"] = "required",
    mode: Literal["enforce", "shadow"] = "enforce",
) -> GuardSpec:
    """Return a spec that allows one weather tool whose city is Paris or Oslo."""
    return GuardSpec(
        request_id=request_id,
        session_id=f"session-{request_id}",
        policy="weather-test",
        policy_sha256="0" * 64,
        mode=mode,
        tool_choice=tool_choice,
        parallel_calls=False,
        tools=[WEATHER_TOOL] if tool_choice != "none" else [],
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    """Return the audit events in a JSON-lines file, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def events_of(
    events: list[dict[str, Any]], request_id: str, name: str
) -> list[dict[str, Any]]:
    """Return the events called ``name`` of one request."""
    return [
        event
        for event in events
        if event.get("request_id") == request_id and event["event"] == name
    ]


def schema_errors(events: list[dict[str, Any]]) -> list[str]:
    """Return every audit schema violation in ``events``, each with its event."""
    return [
        f"{event['event']} {event.get('request_id')}: {error}"
        for event in events
        for error in validation_errors(event)
    ]
