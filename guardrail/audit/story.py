"""The step-by-step story of one session or request, for ``guardrail audit show``.

Events are grouped by request and ordered by time. For each request the
story gives the policy and mode, what the history held, which tools were
allowed or denied, every step whose blocked mass reached ``min_mass`` with
its attribution, the alerts, and the calls that came out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["RequestStory", "collect_stories", "render_stories"]


@dataclass
class RequestStory:
    request_id: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    completed: dict[str, Any] | None = None
    first_time: str = ""

    def add(self, event: dict[str, Any]) -> None:
        stamp = str(event.get("timestamp", ""))
        if not self.first_time or (stamp and stamp < self.first_time):
            self.first_time = stamp
        name = event.get("event")
        if name == "decode_step":
            self.steps.append(event)
        elif name == "blocked_mass_alert":
            self.alerts.append(event)
        elif name == "request_completed":
            self.completed = event


def collect_stories(events: Iterable[dict[str, Any]]) -> list[RequestStory]:
    """Group events by request, ordered by the time of their first event."""
    stories: dict[str, RequestStory] = {}
    for event in events:
        request_id = str(event.get("request_id", ""))
        stories.setdefault(request_id, RequestStory(request_id)).add(event)
    return sorted(stories.values(), key=lambda story: story.first_time)


def render_stories(
    stories: list[RequestStory], console: Console, *, min_mass: float
) -> None:
    for story in stories:
        console.print(_render_story(story, min_mass))


def _render_story(story: RequestStory, min_mass: float) -> RenderableType:
    done = story.completed or {}
    head = story.steps[0] if story.steps else done
    lines: list[RenderableType] = [
        Text.from_markup(
            f"[bold]{escape(story.request_id)}[/]  {escape(story.first_time)}\n"
            f"session {escape(str(head.get('session_id', '?')))} · policy "
            f"{escape(str(head.get('policy', '?')))} "
            f"({escape(str(head.get('policy_sha256', ''))[:12])}) · "
            f"{escape(str(head.get('mode', '?')))} · "
            f"{escape(str(head.get('engine', '?')))}"
        )
    ]
    if done:
        lines.append(_render_context(done))

    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("step", justify="right")
    table.add_column("blocked", justify="right")
    table.add_column("what the mask stopped")
    shown = 0
    for step in story.steps:
        mass = float(step.get("blocked_mass", 0.0))
        if mass < min_mass and not step.get("forced_eos"):
            continue
        shown += 1
        table.add_row(
            str(step.get("step")), f"{mass:.3f}", escape(_describe_step(step))
        )
    if shown:
        lines.append(table)
    else:
        lines.append(Text(f"no step blocked {min_mass:.2f} or more of the mass"))

    for alert in story.alerts:
        lines.append(_render_alert(alert))
    if done:
        lines.append(_render_outcome(done))
    elif story.steps:
        lines.append(Text("no request_completed event: the request did not finish"))
    return Panel(Group(*lines), expand=True)


def _render_context(done: dict[str, Any]) -> Text:
    allowed = [str(name) for name in done.get("allowed_tools") or []]
    offered = [
        str(tool.get("name"))
        for tool in done.get("request_tools") or []
        if isinstance(tool, dict)
    ]
    denied = [name for name in offered if name not in allowed]
    history = done.get("history") or []
    parts = [
        f"agent step {done.get('agent_step', '?')}; "
        f"tool_choice {done.get('tool_choice_mode', '?')}",
        f"allowed: {', '.join(allowed) or 'none'}",
    ]
    if denied:
        parts.append(f"not allowed: {', '.join(denied)}")
    for call in history:
        result = (
            f"result {call.get('result_chars')} chars"
            if "result_chars" in call
            else "no result"
        )
        parts.append(
            f"earlier call {call.get('name')}"
            f"({_compact(call.get('arguments'))}) at step "
            f"{call.get('agent_step')}: {result}"
        )
    return Text("\n".join(parts), style="dim")


def _describe_step(step: dict[str, Any]) -> str:
    attribution = step.get("attribution")
    if not isinstance(attribution, dict):
        top = ", ".join(
            f"{token.get('text')!r} {float(token.get('probability', 0)):.3f}"
            for token in step.get("top_blocked") or []
        )
        suffix = " (end of sequence forced)" if step.get("forced_eos") else ""
        return f"top blocked: {top}{suffix}"

    context = attribution.get("context")
    where = str(context)
    if context == "tool_name":
        where = f"tool name after {attribution.get('prefix', '')!r}"
    elif attribution.get("tool"):
        where = f"{context} of {attribution.get('tool')}"
    parts = [describe_item(item) for item in attribution.get("items") or []]
    rest = float(attribution.get("unattributed", 0.0))
    if rest >= 0.001:
        parts.append(f"other tokens {rest:.3f}")
    return f"{where}: " + "; ".join(parts)


def describe_item(item: dict[str, Any]) -> str:
    """Return one attribution item (or summary target) as a short phrase."""
    kind = item.get("kind")
    mass = float(item.get("mass", item.get("max_mass", 0.0)))
    if kind == "denied_tool":
        why = "; ".join(
            str(part) for part in (item.get("reason"), item.get("rule")) if part
        )
        text = f"denied tool {item.get('tool')} ({why or 'no rule recorded'})"
    elif kind == "invented_tool":
        text = f"invented name {item.get('name')!r}"
    elif kind == "argument":
        text = f"{item.get('argument')}: {item.get('constraint') or 'other'}"
        if item.get("limit") is not None:
            text += f" {_compact(item.get('limit'))}"
        if item.get("source") == "policy":
            text += f" [policy {item.get('rule')}]"
        if item.get("example") is not None:
            text += f" e.g. {item.get('example')!r}"
    elif kind == "unknown_argument":
        text = f"unknown argument {item.get('argument')!r}"
    else:
        text = f"{kind} {item.get('example')!r}" if item.get("example") else str(kind)
    return f"{text} {mass:.3f}"


def _render_alert(alert: dict[str, Any]) -> Text:
    text = Text.from_markup(
        f"[bold yellow]ALERT[/] step {alert.get('step')}: "
        f"{escape(str(alert.get('kind')))} {escape(str(alert.get('tool')))} "
        f"mass {float(alert.get('mass', 0)):.3f} > "
        f"{float(alert.get('threshold', 0)):.2f}"
    )
    result = alert.get("untrusted_result")
    if isinstance(result, dict):
        excerpt = str(result.get("excerpt", "")).replace("\n", " ")
        text.append(
            f"\n  after {result.get('tool')} result ({result.get('chars')} chars, "
            f"step {result.get('agent_step')}): {excerpt!r}"
        )
    return text


def _render_outcome(done: dict[str, Any]) -> Text:
    calls = done.get("calls") or []
    called = (
        ", ".join(f"{c.get('name')}({_compact(c.get('arguments'))})" for c in calls)
        or "no call"
    )
    verdict = "passed" if done.get("validation_passed") else "FAILED"
    text = Text(
        f"→ {called}; post-validation {verdict}; finish "
        f"{done.get('finish_reason')}; max blocked mass "
        f"{float(done.get('blocked_mass_max', 0)):.3f}"
    )
    for error in done.get("validation_errors") or []:
        text.append(f"\n  {error}", style="red")
    return text


def _compact(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."
