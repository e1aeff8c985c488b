"""A self-contained HTML report of audit logs, with inline SVG charts.

The page has no script and no external resource, and its
Content-Security-Policy allows none, so it opens the same offline, from an
e-mail attachment or from a ticket. Every text from the log is
HTML-escaped: tool results and invented names are untrusted input.

Charts:

- blocked mass over the decoding steps of each of the sessions with the
  highest peak (requests of a session side by side, alerts marked);
- the denied tools by the summed peak mass per request;
- alerts over time.

Building it reads the logs twice: once for the summary and the alerts, once
for the steps of the sessions it plots. Memory is bounded by the number of
sessions (their summaries), the alert times, and :data:`MAX_POINTS` points per
plotted session.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from guardrail.audit.reader import parse_time
from guardrail.audit.story import describe_item
from guardrail.audit.summary import AuditSummary, is_policy_target

__all__ = ["MAX_POINTS", "SessionSeries", "build_report", "render_report"]

MAX_POINTS = 600
MAX_SESSIONS = 8
MAX_ALERT_ROWS = 50
TIME_BUCKETS = 30

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330;
  background: #fbfbfd; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.muted { color: #667085; } .cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid #e4e7ec; border-radius: 8px;
  padding: 10px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e7ec; padding: 4px 10px; text-align: left;
  vertical-align: top; }
th { background: #f2f4f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.chart { background: #fff; border: 1px solid #e4e7ec; border-radius: 8px;
  margin: 8px 0; padding: 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr));
  gap: 10px; }
svg text { font: 11px system-ui, sans-serif; fill: #475467; }
code { background: #f2f4f7; padding: 0 3px; border-radius: 3px; }
"""


@dataclass
class SessionSeries:
    """The blocked mass per step of one session, max-pooled to a bounded size.

    When full, adjacent points are merged pairwise (keeping the max), so a
    point covers ``stride`` steps; request boundaries and alerts keep their
    position in steps.
    """

    session_id: str
    stride: int = 1
    points: list[float] = field(default_factory=list)
    policy_points: list[float] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)
    steps: int = 0
    _pending: list[float] = field(default_factory=list)
    _pending_policy: list[float] = field(default_factory=list)
    _request: str | None = None

    def add_step(self, request_id: str, mass: float, policy_mass: float) -> None:
        if request_id != self._request:
            if self._request is not None:
                self.boundaries.append(self.steps)
            self._request = request_id
        self.steps += 1
        self._pending.append(mass)
        self._pending_policy.append(policy_mass)
        if len(self._pending) == self.stride:
            self.points.append(max(self._pending))
            self.policy_points.append(max(self._pending_policy))
            self._pending, self._pending_policy = [], []
            if len(self.points) >= MAX_POINTS:
                self.points = _pool_pairs(self.points)
                self.policy_points = _pool_pairs(self.policy_points)
                self.stride *= 2

    def add_alert(self) -> None:
        self.alerts.append(max(self.steps - 1, 0))

    def values(self) -> list[float]:
        return self.points + ([max(self._pending)] if self._pending else [])

    def policy_values(self) -> list[float]:
        pending = [max(self._pending_policy)] if self._pending_policy else []
        return self.policy_points + pending


def _pool_pairs(values: list[float]) -> list[float]:
    return [max(values[i : i + 2]) for i in range(0, len(values), 2)]


def step_policy_mass(event: dict[str, Any]) -> float:
    """Return the part of a step's blocked mass that the policy itself blocked."""
    attribution = event.get("attribution")
    if not isinstance(attribution, dict):
        return 0.0
    return sum(
        float(item.get("mass", 0.0))
        for item in attribution.get("items") or []
        if is_policy_target(item)
    )


@dataclass
class ReportData:
    summary: AuditSummary
    alerts: list[dict[str, Any]]
    alert_times: list[datetime]
    series: list[SessionSeries]
    sources: list[str]
    problems: list[str]


def top_sessions(summary: AuditSummary, limit: int = MAX_SESSIONS) -> list[str]:
    """Return the sessions to plot: those with alerts first, then by peak mass."""
    ranked = sorted(
        summary.sessions.items(),
        key=lambda item: (item[1].alerts > 0, item[1].mass.max, item[1].requests),
        reverse=True,
    )
    return [session for session, _ in ranked[:limit]]


def collect_series(
    events: Iterable[dict[str, Any]], sessions: list[str]
) -> list[SessionSeries]:
    """Build the step series of ``sessions`` from ``decode_step`` and alerts."""
    series = {session: SessionSeries(session) for session in sessions}
    for event in events:
        target = series.get(str(event.get("session_id")))
        if target is None:
            continue
        if event.get("event") == "decode_step":
            target.add_step(
                str(event.get("request_id")),
                float(event.get("blocked_mass", 0.0)),
                step_policy_mass(event),
            )
        elif event.get("event") == "blocked_mass_alert":
            target.add_alert()
    return [series[session] for session in sessions]


ReadEvents = Callable[[frozenset[str], frozenset[str] | None], Iterable[dict[str, Any]]]


def build_report(
    read: ReadEvents,
    *,
    sources: list[str],
    problems: Callable[[], list[str]],
) -> str:
    """Read the logs twice and return the page.

    ``read(events, sessions)`` yields the events with those names, of those
    sessions (all when ``None``).
    """
    summary = AuditSummary()
    alerts: list[dict[str, Any]] = []
    alert_times: list[datetime] = []
    for event in read(frozenset({"request_completed", "blocked_mass_alert"}), None):
        summary.add(event)
        if event.get("event") == "blocked_mass_alert":
            alerts.append(event)
            alerts = alerts[-MAX_ALERT_ROWS:]
            with contextlib.suppress(ValueError):
                alert_times.append(parse_time(str(event.get("timestamp"))))

    sessions = top_sessions(summary)
    series = collect_series(
        read(frozenset({"decode_step", "blocked_mass_alert"}), frozenset(sessions)),
        sessions,
    )
    data = ReportData(summary, alerts, alert_times, series, sources, problems())
    return render_report(data)


def render_report(data: ReportData) -> str:
    summary = data.summary
    overall = summary.overall
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src '
        "'none'; style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>guardrail audit report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>guardrail audit report</h1>",
        f'<div class="muted">{_e(", ".join(data.sources))} · '
        f"{_e(overall.first_seen or '?')} to {_e(overall.last_seen or '?')}</div>",
    ]
    for problem in data.problems:
        parts.append(f'<p class="muted">read problem: {_e(problem)}</p>')

    parts.append('<div class="cards">')
    for label, value in (
        ("requests", overall.requests),
        ("sessions", len(overall.sessions)),
        ("policies", len(summary.policies)),
        ("blocked calls", overall.blocked_calls),
        ("violations", overall.violations),
        ("alerts", overall.alerts),
        ("p90 policy mass", f"{overall.policy_mass.percentile(90):.3f}"),
    ):
        parts.append(f'<div class="card"><b>{_e(str(value))}</b>{_e(label)}</div>')
    parts.append("</div>")

    parts.append("<h2>Blocked mass over decoding steps, per session</h2>")
    parts.append(
        '<p class="muted">Sessions with alerts first, then by peak blocked '
        "mass. Blue: all blocked mass. Orange: the part the policy blocked "
        "(denied or invented tools, argument values over a policy limit). "
        "Dashed lines separate requests; red marks are alerts.</p>"
    )
    parts.append('<div class="grid">')
    for series in data.series:
        parts.append(f'<div class="chart">{_series_chart(series)}</div>')
    if not data.series:
        parts.append('<p class="muted">no decode steps in the selection</p>')
    parts.append("</div>")

    parts.append("<h2>Denied tools the model reached for</h2>")
    parts.append(
        '<p class="muted">Bar: sum over requests of the peak mass on the tool '
        "at one step. Label: that sum, and the number of requests with mass on "
        "it.</p>"
    )
    parts.append(f'<div class="chart">{_denied_chart(summary)}</div>')

    parts.append("<h2>Alerts over time</h2>")
    parts.append(f'<div class="chart">{_alerts_chart(data.alert_times)}</div>')

    parts.append("<h2>Policies</h2>")
    parts.append(_policy_table(summary))
    parts.append("<h2>Invented tool names</h2>")
    parts.append(_invented_table(summary))
    parts.append(f"<h2>Latest alerts (up to {MAX_ALERT_ROWS})</h2>")
    parts.append(_alert_table(data.alerts))
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _series_chart(series: SessionSeries) -> str:
    width, height = 520, 150
    left, right, top, bottom = 34, 8, 22, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    values = series.values()
    steps = max(series.steps, 1)

    def x_of(step: float) -> float:
        return left + plot_w * step / steps

    def y_of(mass: float) -> float:
        return top + plot_h * (1 - mass)

    out = [
        f'<svg role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f"<title>blocked mass per step, session {_e(series.session_id)}</title>",
        f'<text x="{left}" y="14">session {_e(series.session_id)} · '
        f"{series.steps} steps</text>",
    ]
    for mass in (0.0, 0.5, 1.0):
        y = y_of(mass)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e4e7ec"/>'
        )
        out.append(f'<text x="4" y="{y + 4:.1f}">{mass:.1f}</text>')
    for boundary in series.boundaries:
        x = x_of(boundary)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" '
            'stroke="#98a2b3" stroke-dasharray="3 3"/>'
        )
    if values:
        coordinates = [
            f"{x_of(i * series.stride):.1f},{y_of(v):.1f}" for i, v in enumerate(values)
        ]
        base = f"{x_of((len(values) - 1) * series.stride):.1f},{y_of(0):.1f}"
        area = f"{left:.1f},{y_of(0):.1f} " + " ".join(coordinates) + f" {base}"
        out.append(f'<polygon points="{area}" fill="#c7d7fe" stroke="none"/>')
        out.append(
            f'<polyline points="{" ".join(coordinates)}" fill="none" '
            'stroke="#3e63dd" stroke-width="1.3"/>'
        )
        policy = [
            f"{x_of(i * series.stride):.1f},{y_of(v):.1f}"
            for i, v in enumerate(series.policy_values())
        ]
        out.append(
            f'<polyline class="policy" points="{" ".join(policy)}" fill="none" '
            'stroke="#e8590c" stroke-width="1.6"/>'
        )
    for step in series.alerts:
        out.append(
            f'<circle cx="{x_of(step):.1f}" cy="{top + 4}" r="4" fill="#d92d20">'
            f"<title>alert at step {step}</title></circle>"
        )
    out.append(
        f'<text x="{left}" y="{height - 6}">0</text>'
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end">'
        f"{series.steps}</text></svg>"
    )
    return "".join(out)


def _bar_chart(rows: list[tuple[str, float, str]], *, colour: str) -> str:
    if not rows:
        return '<p class="muted">nothing to show</p>'
    width, row_h, label_w = 760, 24, 200
    height = row_h * len(rows) + 10
    peak = max(value for _, value, _ in rows) or 1.0
    out = [f'<svg role="img" width="{width}" height="{height}">']
    for index, (label, value, note) in enumerate(rows):
        y = 5 + index * row_h
        bar = (width - label_w - 150) * value / peak
        out.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(label)}'
            f'</text><rect x="{label_w}" y="{y + 3}" width="{bar:.1f}" '
            f'height="{row_h - 8}" fill="{colour}"/>'
            f'<text x="{label_w + bar + 6:.1f}" y="{y + 15}">{_e(note)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _denied_chart(summary: AuditSummary) -> str:
    ranked = sorted(
        summary.denied_tools.items(), key=lambda item: item[1].total, reverse=True
    )[:12]
    rows = [
        (tool, sketch.total, f"{sketch.total:.2f} over {sketch.count} requests")
        for tool, sketch in ranked
    ]
    return _bar_chart(rows, colour="#f79009")


def _alerts_chart(times: list[datetime]) -> str:
    if not times:
        return '<p class="muted">no alerts</p>'
    start, end = min(times), max(times)
    span = (end - start).total_seconds() or 1.0
    counts = [0] * TIME_BUCKETS
    for stamp in times:
        index = int((stamp - start).total_seconds() / span * (TIME_BUCKETS - 1))
        counts[index] += 1
    width, height, left, bottom = 760, 140, 34, 22
    plot_h = height - bottom - 10
    bar_w = (width - left - 8) / TIME_BUCKETS
    peak = max(counts)
    out = [f'<svg role="img" width="{width}" height="{height}">']
    for index, count in enumerate(counts):
        bar_h = plot_h * count / peak
        x = left + index * bar_w
        out.append(
            f'<rect x="{x:.1f}" y="{10 + plot_h - bar_h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{bar_h:.1f}" fill="#d92d20">'
            f"<title>{count} alerts</title></rect>"
        )
    out.append(
        f'<text x="4" y="16">{peak}</text><text x="4" y="{10 + plot_h}">0</text>'
        f'<text x="{left}" y="{height - 6}">{_e(start.isoformat(timespec="seconds"))}'
        f'</text><text x="{width - 8}" y="{height - 6}" text-anchor="end">'
        f"{_e(end.isoformat(timespec='seconds'))}</text></svg>"
    )
    return "".join(out)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    out = ["<table><tr>"]
    out.extend(f"<th>{_e(header)}</th>" for header in headers)
    out.append("</tr>")
    for row in rows:
        out.append("<tr>")
        for index, cell in enumerate(row):
            css = ' class="num"' if index in numeric else ""
            out.append(f"<td{css}>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _policy_table(summary: AuditSummary) -> str:
    rows = []
    for name, stats in sorted(summary.policies.items()):
        versions = sorted(summary.policy_versions.get(name, ()))
        rows.append(
            [
                name,
                ", ".join(version[:12] for version in versions),
                str(stats.requests),
                str(len(stats.sessions)),
                str(stats.blocked_calls),
                str(stats.violations),
                str(stats.alerts),
                f"{stats.policy_mass.percentile(50):.3f}",
                f"{stats.policy_mass.percentile(90):.3f}",
                f"{stats.policy_mass.max:.3f}",
                f"{stats.mass.percentile(90):.3f}",
            ]
        )
    headers = [
        "policy",
        "sha256",
        "requests",
        "sessions",
        "blocked calls",
        "violations",
        "alerts",
        "policy p50",
        "policy p90",
        "policy max",
        "peak p90",
    ]
    return _table(headers, rows, set(range(2, 11)))


def _invented_table(summary: AuditSummary) -> str:
    rows = [
        [entry["name"], str(entry["requests"]), f"{entry['max_mass']:.3f}"]
        for entry in summary.overall.top_invented(limit=15)
    ]
    return _table(["name", "requests", "max mass"], rows, {1, 2})


def _alert_table(alerts: list[dict[str, Any]]) -> str:
    rows = []
    for alert in reversed(alerts):
        result = alert.get("untrusted_result")
        preceding = ""
        if isinstance(result, dict):
            preceding = f"{result.get('tool')}: {result.get('excerpt', '')}"
        item = {"kind": alert.get("kind"), "mass": alert.get("mass", 0.0)}
        item.update(tool=alert.get("tool"), name=alert.get("tool"))
        item["rule"] = alert.get("rule")
        rows.append(
            [
                str(alert.get("timestamp", "")),
                str(alert.get("session_id", "")),
                str(alert.get("step", "")),
                describe_item(item),
                preceding,
            ]
        )
    headers = ["time", "session", "step", "target and mass", "untrusted result before"]
    return _table(headers, rows, {2})
