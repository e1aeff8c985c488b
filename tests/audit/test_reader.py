"""Streaming audit logs: gzip, truncated and invalid lines, filters, memory."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from guardrail.audit.reader import MAX_LINE_BYTES, EventFilter, LogReader, parse_time


def event(name: str, **fields: Any) -> dict[str, Any]:
    base = {
        "schema_version": 1,
        "request_id": "r1",
        "session_id": "s1",
        "policy": "p",
        "policy_sha256": "abc",
        "mode": "enforce",
        "engine": "transformers",
    }
    return {**base, **fields, "event": name, "timestamp": "2026-12-04T10:00:00Z"}


def write_lines(path: Path, events: list[dict[str, Any]], tail: bytes = b"") -> Path:
    with path.open("wb") as out:
        for item in events:
            out.write(json.dumps(item).encode() + b"\n")
        out.write(tail)
    return path


EVENTS = [
    event("decode_step", step=0, blocked_mass=0.5),
    event("decode_step", step=1, blocked_mass=0.1),
    event("request_completed", calls=[{"name": "refund", "arguments": {}}]),
]


def read_all(reader: LogReader) -> list[dict[str, Any]]:
    return list(reader.events())


def test_plain_log_reads_every_event(tmp_path):
    reader = LogReader([write_lines(tmp_path / "a.jsonl", EVENTS)])

    assert read_all(reader) == EVENTS
    assert reader.problems == []


def test_gzip_log_reads_like_plain(tmp_path):
    plain = write_lines(tmp_path / "a.jsonl", EVENTS)
    packed = tmp_path / "a.log"
    packed.write_bytes(gzip.compress(plain.read_bytes()))

    assert read_all(LogReader([packed])) == EVENTS


def test_truncated_last_line_reported_not_fatal(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", EVENTS, tail=b'{"event": "decode_st')
    reader = LogReader([path])

    assert read_all(reader) == EVENTS
    [problem] = reader.problems
    assert problem.kind == "truncated"
    assert problem.line == 4
    assert "cut off after 20 bytes" in problem.message


def test_last_line_without_newline_but_valid(tmp_path):
    text = json.dumps(EVENTS[0]).encode()
    path = tmp_path / "a.jsonl"
    path.write_bytes(text)

    reader = LogReader([path])

    assert read_all(reader) == [EVENTS[0]]
    assert reader.problems == []


def test_truncated_gzip_reported_not_fatal(tmp_path):
    plain = write_lines(tmp_path / "a.jsonl", EVENTS * 200)
    packed = gzip.compress(plain.read_bytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])

    reader = LogReader([path])
    events = read_all(reader)

    assert 0 < len(events) < len(EVENTS) * 200
    assert reader.truncated
    assert not reader.invalid


def test_invalid_middle_line_has_location(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps(EVENTS[0]), "not json", "[1, 2]", json.dumps(EVENTS[2])]
    path.write_text("\n".join(lines) + "\n")

    reader = LogReader([path])

    assert read_all(reader) == [EVENTS[0], EVENTS[2]]
    assert [str(p).split(":", 1)[1] for p in reader.invalid] == [
        "2: invalid JSON (Expecting value: line 1 column 1 (char 0))",
        "3: expected a JSON object, got list",
    ]


def test_overlong_line_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    with path.open("wb") as out:
        out.write(b'{"pad": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        out.write(json.dumps(EVENTS[2]).encode() + b"\n")

    reader = LogReader([path])

    assert read_all(reader) == [EVENTS[2]]
    assert "longer than" in reader.invalid[0].message


def test_unwanted_events_counted_not_decoded(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", EVENTS)
    reader = LogReader([path], wanted=frozenset({"request_completed"}))

    assert read_all(reader) == [EVENTS[2]]
    assert reader.skipped == 2
    assert reader.counts == {"decode_step": 2, "request_completed": 1}


def test_event_name_nested_key_not_misread(tmp_path):
    nested = event("request_completed", metadata={"event": "decode_step"})
    path = write_lines(tmp_path / "a.jsonl", [nested])

    reader = LogReader([path], wanted=frozenset({"request_completed"}))

    assert read_all(reader) == [nested]


@pytest.mark.parametrize(
    ("event_filter", "expected"),
    [
        (EventFilter(policy="p"), 3),
        (EventFilter(policy="abc"), 3),
        (EventFilter(policy="other"), 0),
        (EventFilter(session="s1"), 3),
        (EventFilter(session="s2"), 0),
        (EventFilter(tool="refund"), 1),
        (EventFilter(since=datetime(2026, 12, 4, 10, tzinfo=UTC)), 3),
        (EventFilter(since=datetime(2026, 12, 4, 10, 0, 1, tzinfo=UTC)), 0),
        (EventFilter(until=datetime(2026, 12, 4, 9, tzinfo=UTC)), 0),
    ],
)
def test_filters(tmp_path, event_filter, expected):
    path = write_lines(tmp_path / "a.jsonl", EVENTS)

    assert len(read_all(LogReader([path], filter=event_filter))) == expected


def test_parse_time_without_zone_is_utc():
    assert parse_time("2026-12-04T10:00") == datetime(2026, 12, 4, 10, tzinfo=UTC)


def test_parse_time_rejects_garbage():
    with pytest.raises(ValueError, match="invalid time 'yesterday': use ISO 8601"):
        parse_time("yesterday")


def test_progress_reaches_file_size(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", EVENTS * 5000)
    seen: list[tuple[int, int]] = []

    read_all(
        LogReader([path], progress=lambda _, done, total: seen.append((done, total)))
    )

    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    assert len(seen) > 2


def test_streaming_memory_is_bounded(tmp_path):
    """A 60 MB log reads with a peak far below its size."""
    line = json.dumps(
        event("decode_step", step=3, blocked_mass=0.2, top_blocked=[], pad="x" * 300)
    ).encode()
    path = tmp_path / "big.jsonl"
    with path.open("wb") as out:
        out.write((line + b"\n") * (60_000_000 // (len(line) + 1)))

    reader = LogReader([path], wanted=frozenset({"request_completed"}))
    tracemalloc.start()
    count = sum(1 for _ in reader.events())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert count == 0
    assert reader.skipped > 100_000
    assert peak < 4_000_000


def test_sessions_prefilter_skips_others(tmp_path):
    other = event("decode_step", session_id="s2", step=0)
    path = write_lines(tmp_path / "a.jsonl", [*EVENTS, other])

    reader = LogReader([path], sessions=frozenset({"s2"}))

    assert read_all(reader) == [other]
    assert reader.skipped == 3


def test_sessions_prefilter_escaped_id_decoded(tmp_path):
    quoted = event("decode_step", session_id='s"2', step=0)
    path = write_lines(tmp_path / "a.jsonl", [quoted])

    reader = LogReader([path], sessions=frozenset({'s"2'}))

    assert read_all(reader) == [quoted]
