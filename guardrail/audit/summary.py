"""Aggregate an audit log per policy, per tool and per session.

The summary reads only ``request_completed`` and ``blocked_mass_alert``
events, so it skips the bulk of a log (``decode_step``) without decoding it.
Memory grows with the number of distinct policies, tools, sessions and
invented names, never with the number of lines: blocked-mass percentiles
come from a log-bucketed histogram (:class:`MassSketch`) and the invented
names are pruned to the most frequent.

Definitions (also in ``docs/audit.md``):

- ``requests``: ``request_completed`` events.
- ``blocked_calls``: targets of a request's attribution that received at
  least :data:`BLOCKED_CALL_MASS` of the mass at one step and are a denied
  tool, an invented tool or an argument value a policy constraint forbids.
  The model more likely than not wanted that forbidden call.
- ``violations``: requests whose output failed post-validation
  (``policy_violated``), which in shadow mode are the calls enforce mode
  would have blocked.
- ``blocked_mass`` percentiles are over each request's maximum step mass
  (``blocked_mass_max``). That peak is often 1 on harmless steps (after a
  complete call only end of sequence is allowed), so ``policy_mass`` gives
  the percentiles of each request's peak mass that the policy itself
  blocked (:func:`is_policy_target`): how hard the model pushed on it.
  Per tool, both are over each request's peak mass attributed to the tool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BLOCKED_CALL_MASS",
    "AuditSummary",
    "MassSketch",
    "is_blocked_call",
    "is_policy_target",
    "summarize",
]

BLOCKED_CALL_MASS = 0.5
TOOL_KINDS = {"denied_tool", "invented_tool"}
PERCENTILES = (50, 90, 99)

# Invented names kept per group before the rarest are dropped; a session
# keeps fewer, because a log can hold millions of sessions.
MAX_INVENTED_NAMES = 2000
MAX_SESSION_INVENTED_NAMES = 20


def is_policy_target(item: dict[str, Any]) -> bool:
    """Tell whether an attribution item is mass the policy itself blocked.

    That is mass on a denied tool, on an invented tool, or on an argument
    value a policy constraint forbids. Mass that the tool's own schema or
    the call layout blocked does not count.
    """
    kind = item.get("kind")
    return kind in TOOL_KINDS or (kind == "argument" and item.get("source") == "policy")


def is_blocked_call(target: dict[str, Any]) -> bool:
    """Tell whether an attribution target counts as a blocked call.

    It does when the model put at least :data:`BLOCKED_CALL_MASS` at one
    step on a denied tool, an invented tool, or an argument value that a
    policy constraint forbids.
    """
    mass = float(target.get("max_mass", 0.0))
    return mass >= BLOCKED_CALL_MASS and is_policy_target(target)


class MassSketch:
    """Count, mean, max and approximate percentiles of values in [0, 1].

    Values are counted in buckets whose width grows by 5 % per bucket, from
    1e-6 up to 1 (about 285 buckets at most, kept sparse). A percentile is
    therefore within 5 % of the true value. Values below 1e-6 count as
    zero.
    """

    RATIO = 1.05
    FLOOR = 1e-6

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.buckets: dict[int, int] = {}

    def add(self, value: float) -> None:
        value = min(max(float(value), 0.0), 1.0)
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        bucket = -1
        if value >= self.FLOOR:
            bucket = int(math.log(value / self.FLOOR, self.RATIO))
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1

    def percentile(self, q: float) -> float:
        """Return the upper edge of the bucket holding the q-th percentile."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                if bucket < 0:
                    return 0.0
                return min(self.max, self.FLOOR * self.RATIO ** (bucket + 1))
        return self.max

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"count": self.count}
        for q in PERCENTILES:
            data[f"p{q}"] = round(self.percentile(q), 6)
        data["max"] = round(self.max, 6)
        data["mean"] = round(self.total / self.count, 6) if self.count else 0.0
        return data


@dataclass
class GroupStats:
    """Counters of one policy, tool or session."""

    requests: int = 0
    blocked_calls: int = 0
    violations: int = 0
    alerts: int = 0
    calls: int = 0
    mass: MassSketch = field(default_factory=MassSketch)
    policy_mass: MassSketch = field(default_factory=MassSketch)
    sessions: set[str] = field(default_factory=set)
    invented: dict[str, list[float]] = field(default_factory=dict)
    first_seen: str | None = None
    last_seen: str | None = None
    invented_limit: int = MAX_INVENTED_NAMES

    def see_time(self, stamp: Any) -> None:
        if not isinstance(stamp, str):
            return
        if self.first_seen is None or stamp < self.first_seen:
            self.first_seen = stamp
        if self.last_seen is None or stamp > self.last_seen:
            self.last_seen = stamp

    def add_invented(self, name: str, mass: float) -> None:
        entry = self.invented.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], mass)
        if len(self.invented) > self.invented_limit:
            kept = sorted(self.invented.items(), key=lambda kv: kv[1], reverse=True)
            self.invented = dict(kept[: self.invented_limit // 2])

    def top_invented(self, limit: int = 5) -> list[dict[str, Any]]:
        ranked = sorted(self.invented.items(), key=lambda kv: kv[1], reverse=True)
        return [
            {"name": name, "requests": int(count), "max_mass": round(mass, 6)}
            for name, (count, mass) in ranked[:limit]
        ]

    def to_json(self, *, sessions: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"requests": self.requests}
        if sessions:
            data["sessions"] = len(self.sessions)
        data.update(
            calls=self.calls,
            blocked_calls=self.blocked_calls,
            violations=self.violations,
            alerts=self.alerts,
            blocked_mass=self.mass.to_json(),
            policy_mass=self.policy_mass.to_json(),
            top_invented=self.top_invented(),
            first_seen=self.first_seen,
            last_seen=self.last_seen,
        )
        return data


@dataclass
class AuditSummary:
    """The aggregates of one or more logs."""

    policies: dict[str, GroupStats] = field(default_factory=dict)
    tools: dict[str, GroupStats] = field(default_factory=dict)
    sessions: dict[str, GroupStats] = field(default_factory=dict)
    overall: GroupStats = field(default_factory=GroupStats)
    policy_versions: dict[str, set[str]] = field(default_factory=dict)
    denied_tools: dict[str, MassSketch] = field(default_factory=dict)

    def add(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "request_completed":
            self._add_request(event)
        elif name == "blocked_mass_alert":
            self._add_alert(event)

    def _groups(self, event: dict[str, Any]) -> list[GroupStats]:
        policy = str(event.get("policy", ""))
        session = str(event.get("session_id", ""))
        self.policy_versions.setdefault(policy, set()).add(
            str(event.get("policy_sha256", ""))
        )
        return [
            self.overall,
            self.policies.setdefault(policy, GroupStats()),
            self.sessions.setdefault(
                session, GroupStats(invented_limit=MAX_SESSION_INVENTED_NAMES)
            ),
        ]

    def _add_request(self, event: dict[str, Any]) -> None:
        session = str(event.get("session_id", ""))
        targets = [t for t in event.get("attribution") or [] if isinstance(t, dict)]
        blocked = [t for t in targets if is_blocked_call(t)]
        violated = bool(event.get("policy_violated"))
        calls = [c for c in event.get("calls") or [] if isinstance(c, dict)]
        mass = float(event.get("blocked_mass_max", 0.0))
        pushed = max(
            (float(t.get("max_mass", 0.0)) for t in targets if is_policy_target(t)),
            default=0.0,
        )

        for group in self._groups(event):
            group.requests += 1
            group.blocked_calls += len(blocked)
            group.violations += int(violated)
            group.calls += len(calls)
            group.mass.add(mass)
            group.policy_mass.add(pushed)
            if group is not self.sessions[session]:
                group.sessions.add(session)
            group.see_time(event.get("timestamp"))
            for target in targets:
                if target.get("kind") == "invented_tool" and target.get("name"):
                    group.add_invented(
                        str(target["name"]), float(target.get("max_mass", 0.0))
                    )

        self._add_tools(event, targets, blocked, calls)

    def _add_tools(
        self,
        event: dict[str, Any],
        targets: list[dict[str, Any]],
        blocked: list[dict[str, Any]],
        calls: list[dict[str, Any]],
    ) -> None:
        offered = {
            str(tool.get("name"))
            for tool in event.get("request_tools") or []
            if isinstance(tool, dict)
        }
        offered.update(str(name) for name in event.get("allowed_tools") or [])
        attributed: dict[str, float] = {}
        for target in targets:
            tool = target.get("tool")
            kind = target.get("kind")
            if (
                isinstance(tool, str)
                and kind != "invented_tool"
                and is_policy_target(target)
            ):
                mass = float(target.get("max_mass", 0.0))
                attributed[tool] = max(attributed.get(tool, 0.0), mass)

        session = str(event.get("session_id", ""))
        for tool in offered | set(attributed):
            stats = self.tools.setdefault(tool, GroupStats())
            stats.requests += 1
            stats.sessions.add(session)
            stats.mass.add(attributed.get(tool, 0.0))
            stats.policy_mass.add(attributed.get(tool, 0.0))
            stats.see_time(event.get("timestamp"))
        for call in calls:
            self.tools.setdefault(str(call.get("name")), GroupStats()).calls += 1
        for target in targets:
            if target.get("kind") == "denied_tool" and target.get("tool"):
                sketch = self.denied_tools.setdefault(str(target["tool"]), MassSketch())
                sketch.add(float(target.get("max_mass", 0.0)))
        for target in blocked:
            if isinstance(target.get("tool"), str):
                self.tools.setdefault(target["tool"], GroupStats()).blocked_calls += 1

    def _add_alert(self, event: dict[str, Any]) -> None:
        for group in self._groups(event):
            group.alerts += 1
        tool = event.get("tool")
        if event.get("kind") == "denied_tool" and isinstance(tool, str):
            self.tools.setdefault(tool, GroupStats()).alerts += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_json(),
            "policies": {
                name: {
                    **stats.to_json(),
                    "policy_sha256": sorted(self.policy_versions.get(name, ())),
                }
                for name, stats in sorted(self.policies.items())
            },
            "tools": {
                name: stats.to_json() for name, stats in sorted(self.tools.items())
            },
            "denied_tools": {
                name: sketch.to_json()
                for name, sketch in sorted(self.denied_tools.items())
            },
            "sessions": {
                name: stats.to_json(sessions=False)
                for name, stats in sorted(self.sessions.items())
            },
        }


def summarize(events: Iterable[dict[str, Any]]) -> AuditSummary:
    """Aggregate ``events`` (any order) into an :class:`AuditSummary`."""
    summary = AuditSummary()
    for event in events:
        summary.add(event)
    return summary
