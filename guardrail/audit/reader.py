"""Stream audit events out of JSON-lines files, plain or gzip.

Files are read line by line, so memory stays bounded by the longest line
(at most :data:`MAX_LINE_BYTES`) whatever the file's size. gzip input is
recognised by its magic bytes, not its name. Problems do not stop the read:

- a last line without its newline that does not parse is a ``truncated``
  line (a writer stopped mid-record), reported and skipped;
- any other line that is not a JSON object is ``invalid``, reported with
  file:line and skipped;
- a gzip stream that ends early is reported as ``truncated``.

Callers decide what a problem means; the CLI exits 2 on ``invalid`` lines
and only warns about ``truncated`` ones.

``wanted`` names the events a caller needs: a line whose event is known
from its text and is not wanted is counted but not decoded, which makes a
summary of a log full of ``decode_step`` events several times faster.
``sessions`` does the same for the session ids a caller needs.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MAX_LINE_BYTES",
    "EventFilter",
    "LogReader",
    "ReadProblem",
    "parse_time",
]

MAX_LINE_BYTES = 16 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_EVENT_KEY = b'"event": "'
_SESSION_KEY = b'"session_id": "'

ProgressCallback = Callable[[Path, int, int], None]


@dataclass(frozen=True)
class ReadProblem:
    """A line that could not be read: ``kind`` is ``truncated`` or ``invalid``."""

    path: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def parse_time(value: str) -> datetime:
    """Parse an ISO 8601 time; a value without a zone is taken as UTC.

    Raises ``ValueError`` naming the value and the expected form.
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as err:
        raise ValueError(
            f"invalid time {value!r}: use ISO 8601, such as 2026-12-04 or "
            "2026-12-04T16:55:00Z"
        ) from err
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


@dataclass(frozen=True)
class EventFilter:
    """The conditions an event must meet to be kept; every field set must match.

    ``tool`` keeps events that mention the tool: as offered, allowed or
    called in ``request_completed``, as a target of attribution, or as the
    tool of an alert.
    """

    since: datetime | None = None
    until: datetime | None = None
    policy: str | None = None
    tool: str | None = None
    session: str | None = None
    request: str | None = None

    @property
    def empty(self) -> bool:
        return all(value is None for value in self.__dict__.values())

    def matches(self, event: dict[str, Any]) -> bool:
        if self.policy is not None and self.policy not in {
            event.get("policy"),
            event.get("policy_sha256"),
        }:
            return False
        if self.session is not None and event.get("session_id") != self.session:
            return False
        if self.request is not None and event.get("request_id") != self.request:
            return False
        if self.since is not None or self.until is not None:
            stamp = _event_time(event)
            if stamp is None:
                return False
            if self.since is not None and stamp < self.since:
                return False
            if self.until is not None and stamp > self.until:
                return False
        return self.tool is None or self.tool in mentioned_tools(event)


def mentioned_tools(event: dict[str, Any]) -> set[str]:
    """Return the tool names an event mentions."""
    names: set[str] = set()
    tool = event.get("tool")
    if isinstance(tool, str):
        names.add(tool)
    for key in ("allowed_tools",):
        names.update(name for name in event.get(key) or [] if isinstance(name, str))
    for key in ("calls", "request_tools", "history"):
        for entry in event.get(key) or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                names.add(entry["name"])
    attribution = event.get("attribution")
    items = attribution.get("items", []) if isinstance(attribution, dict) else []
    if isinstance(attribution, list):
        items = attribution
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("tool"), str):
            names.add(item["tool"])
    return names


def _event_time(event: dict[str, Any]) -> datetime | None:
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return parse_time(stamp)
    except ValueError:
        return None


@dataclass
class LogReader:
    """Reads events from ``paths`` in order, recording problems as it goes.

    ``progress`` is called with (path, compressed bytes read, file size)
    every few thousand lines and at the end of each file.
    """

    paths: list[Path]
    filter: EventFilter = field(default_factory=EventFilter)
    wanted: frozenset[str] | None = None
    sessions: frozenset[str] | None = None
    progress: ProgressCallback | None = None
    problems: list[ReadProblem] = field(default_factory=list)
    lines: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def invalid(self) -> list[ReadProblem]:
        return [problem for problem in self.problems if problem.kind == "invalid"]

    @property
    def truncated(self) -> list[ReadProblem]:
        return [problem for problem in self.problems if problem.kind == "truncated"]

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield each decoded, wanted event that passes the filter."""
        for path in self.paths:
            yield from self._read_file(path)

    def _read_file(self, path: Path) -> Iterator[dict[str, Any]]:
        try:
            raw = path.open("rb")
        except OSError as err:
            raise OSError(
                f"cannot read audit log {path}: {err.strerror}; check the path"
            ) from err
        with raw:
            size = _size_of(raw)
            stream: IO[bytes] = raw
            if raw.read(2) == GZIP_MAGIC:
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
            raw.seek(0)
            number = 0
            try:
                for number, line in _lines(stream, path, self.problems):
                    self.lines += 1
                    if self.progress is not None and number % 4096 == 0:
                        self.progress(path, raw.tell(), size)
                    event = self._decode(path, number, line)
                    if event is not None and self.filter.matches(event):
                        yield event
            except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                self.problems.append(
                    ReadProblem(
                        str(path),
                        number + 1,
                        "truncated",
                        f"the gzip stream ends early or is damaged ({err}); "
                        "the events before it were read",
                    )
                )
            if self.progress is not None:
                self.progress(path, size, size)

    def _decode(self, path: Path, number: int, line: bytes) -> dict[str, Any] | None:
        complete = line.endswith(b"\n")
        if not line.strip():
            return None
        name = _event_name(line)
        known = complete and name is not None and self.wanted is not None
        if known and name not in self.wanted:
            self.counts[name] = self.counts.get(name, 0) + 1
            self.skipped += 1
            return None
        if complete and self.sessions is not None:
            session = _session_of(line)
            if session is not None and session not in self.sessions:
                self.skipped += 1
                return None

        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            event = None
            reason = f"invalid JSON ({err})"
        else:
            reason = f"expected a JSON object, got {type(event).__name__}"
        if not isinstance(event, dict):
            kind = "invalid" if complete else "truncated"
            if kind == "truncated":
                reason = (
                    f"the last line is cut off after {len(line)} bytes (no newline, "
                    "not valid JSON); a writer probably stopped mid-record"
                )
            self.problems.append(ReadProblem(str(path), number, kind, reason))
            return None

        name = event.get("event")
        if isinstance(name, str):
            self.counts[name] = self.counts.get(name, 0) + 1
        if self.wanted is not None and name not in self.wanted:
            return None
        return event


def _lines(
    stream: IO[bytes], path: Path, problems: list[ReadProblem]
) -> Iterable[tuple[int, bytes]]:
    """Yield (line number, line); a line over the limit is reported and skipped."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        if not line:
            return
        number += 1
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(MAX_LINE_BYTES)
            problems.append(
                ReadProblem(
                    str(path),
                    number,
                    "invalid",
                    f"line longer than {MAX_LINE_BYTES} bytes, skipped",
                )
            )
            continue
        yield number, line


def _event_name(line: bytes) -> str | None:
    """Read the top-level event name from a line without decoding it.

    structlog writes ``event`` after every field but ``timestamp``, so the
    last occurrence of the key is the top-level one. A nested key of that
    name earlier in the line does not mislead it.
    """
    start = line.rfind(_EVENT_KEY)
    if start < 0:
        return None
    start += len(_EVENT_KEY)
    end = line.find(b'"', start)
    if end < 0:
        return None
    return line[start:end].decode("ascii", "replace")


def _session_of(line: bytes) -> str | None:
    """Read the top-level session id from a line without decoding it.

    The join keys come first in every event, so the first occurrence of the
    key is the top-level one. An id with escaped characters is not read
    (``None``), and the caller then decodes the line.
    """
    start = line.find(_SESSION_KEY)
    if start < 0:
        return None
    start += len(_SESSION_KEY)
    end = line.find(b'"', start)
    if end < 0 or b"\\" in line[start:end]:
        return None
    return line[start:end].decode("utf-8", "replace")


def _size_of(raw: IO[bytes]) -> int:
    raw.seek(0, 2)
    size = raw.tell()
    raw.seek(0)
    return size
