"""Every audit event the real pipeline writes validates against the JSON Schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from guardrail.audit.events import event_schema, validation_errors

EVENT_TYPES = ("decode_step", "blocked_mass_alert", "request_completed")


def test_schema_file_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(event_schema(1))


@pytest.mark.model
def test_every_generated_event_validates(generated_events):
    problems = {
        index: validation_errors(event)
        for index, event in enumerate(generated_events)
        if validation_errors(event)
    }

    assert problems == {}


@pytest.mark.model
@pytest.mark.parametrize("name", EVENT_TYPES)
def test_generated_log_has_event_type(generated_events, name):
    assert any(event["event"] == name for event in generated_events)


@pytest.mark.model
def test_generated_log_has_attributed_steps(generated_events):
    contexts = {
        event["attribution"]["context"]
        for event in generated_events
        if event["event"] == "decode_step" and "attribution" in event
    }

    assert {"tool_name", "arguments", "text"} <= contexts


@pytest.mark.model
def test_every_event_carries_join_keys(generated_events):
    keys = {"request_id", "session_id", "policy", "policy_sha256", "mode", "engine"}
    for event in generated_events:
        assert keys <= set(event), event["event"]


def first_of(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return copy.deepcopy(next(e for e in events if e["event"] == name))


@pytest.mark.model
@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("decode_step", lambda e: e.pop("request_id"), "'request_id' is a required"),
        ("decode_step", lambda e: e.update(blocked_mass=1.5), "1.5 is greater"),
        ("decode_step", lambda e: e.update(extra_field=1), "extra_field"),
        ("request_completed", lambda e: e.update(mode="audit"), "'audit' is not one"),
        (
            "blocked_mass_alert",
            lambda e: e.update(kind="argument"),
            "'argument' is not one",
        ),
    ],
)
def test_schema_rejects_broken_event(generated_events, name, change, message):
    event = first_of(generated_events, name)
    change(event)

    errors = validation_errors(event)

    assert any(message in error for error in errors), errors


def test_schema_rejects_unknown_event_name():
    errors = validation_errors({"event": "decode_stepp", "schema_version": 1})

    assert any("decode_stepp" in error for error in errors)


def test_schema_rejects_unknown_version():
    errors = validation_errors({"event": "decode_step", "schema_version": 7})

    assert errors == ["$.schema_version: no audit event schema for version 7; known: 1"]


def test_schema_ships_in_package():
    from importlib import resources

    path = resources.files("guardrail.audit") / "schema" / "events.v1.json"

    assert json.loads(path.read_text(encoding="utf-8"))["$defs"]["decode_step"]
