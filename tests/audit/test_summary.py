"""Aggregates per policy, tool and session, checked against the events."""

from __future__ import annotations

import random

import pytest

from guardrail.audit.summary import MassSketch, is_blocked_call, summarize


@pytest.mark.parametrize("q", [50, 90, 99])
def test_sketch_percentile_within_five_percent(q):
    rng = random.Random(7)
    values = [rng.random() ** 3 for _ in range(5000)]
    sketch = MassSketch()
    for value in values:
        sketch.add(value)

    exact = sorted(values)[max(0, -(-q * len(values) // 100) - 1)]

    assert sketch.percentile(q) == pytest.approx(exact, rel=0.05)


def test_sketch_zero_and_max():
    sketch = MassSketch()
    for value in (0.0, 0.0, 0.0, 0.7):
        sketch.add(value)

    assert sketch.percentile(50) == 0.0
    assert sketch.percentile(100) == pytest.approx(0.7)
    assert sketch.max == 0.7


def test_sketch_memory_is_bounded():
    sketch = MassSketch()
    for index in range(100_000):
        sketch.add(index / 100_000)

    assert len(sketch.buckets) < 300


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"kind": "denied_tool", "tool": "d", "max_mass": 0.6}, True),
        ({"kind": "denied_tool", "tool": "d", "max_mass": 0.4}, False),
        ({"kind": "invented_tool", "name": "x", "max_mass": 0.5}, True),
        ({"kind": "argument", "source": "policy", "max_mass": 0.9}, True),
        ({"kind": "argument", "source": "tool_schema", "max_mass": 0.9}, False),
        ({"kind": "malformed", "max_mass": 1.0}, False),
    ],
)
def test_blocked_call_definition(target, expected):
    assert is_blocked_call(target) is expected


@pytest.mark.model
def test_summary_counts_match_events(generated_events):
    summary = summarize(generated_events).to_json()
    completed = [e for e in generated_events if e["event"] == "request_completed"]
    alerts = [e for e in generated_events if e["event"] == "blocked_mass_alert"]

    assert summary["overall"]["requests"] == len(completed)
    assert summary["overall"]["alerts"] == len(alerts)
    assert summary["overall"]["sessions"] == 4
    assert set(summary["policies"]) == {"bait-support", "bait-banking"}
    assert summary["sessions"]["s-refund"]["requests"] == 2
    assert summary["overall"]["calls"] == sum(len(e["calls"]) for e in completed)
    assert summary["overall"]["violations"] == sum(
        e["policy_violated"] for e in completed
    )


@pytest.mark.model
def test_summary_peak_mass_matches_events(generated_events):
    summary = summarize(generated_events).to_json()
    completed = [e for e in generated_events if e["event"] == "request_completed"]

    peak = max(e["blocked_mass_max"] for e in completed)

    assert summary["overall"]["blocked_mass"]["max"] == pytest.approx(peak)


@pytest.mark.model
def test_summary_injected_amount_is_blocked_call(generated_events):
    """The model wanted 2000 euros against a cap of 500: a blocked call."""
    summary = summarize(generated_events).to_json()

    assert summary["sessions"]["s-inject"]["blocked_calls"] >= 1
    assert summary["tools"]["transfer_funds"]["blocked_calls"] >= 1


@pytest.mark.model
def test_summary_lists_denied_tool(generated_events):
    summary = summarize(generated_events).to_json()

    assert summary["denied_tools"]["delete_customer"]["max"] > 0.05
    assert summary["tools"]["delete_customer"]["alerts"] >= 1


@pytest.mark.model
def test_summary_invented_names(generated_events):
    summary = summarize(generated_events).to_json()
    names = [entry["name"] for entry in summary["overall"]["top_invented"]]

    assert names
    assert "delete_customer" not in names
