"""``guardrail audit``: review audit logs (summary, show, report, replay).

Every command takes one or more JSON-lines logs, plain or gzip, and the
same filters. A truncated last line is reported as a warning. Any other
line that is not a JSON object is reported with file:line, and the command
exits 2 after it has printed its result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from guardrail.audit.reader import EventFilter, LogReader, parse_time
from guardrail.cli.common import EXIT_INPUT, fail, stderr
from guardrail.errors import GuardrailError, InputError

audit_app = typer.Typer(help="Review audit logs.", no_args_is_help=True)

# Files smaller than this finish before a progress bar would help.
PROGRESS_MIN_BYTES = 32 * 1024 * 1024

LogsArgument = Annotated[
    list[Path],
    typer.Argument(help="Audit logs (JSON lines, plain or gzip).", show_default=False),
]
SinceOption = Annotated[
    str | None,
    typer.Option(help="Keep events at or after this ISO 8601 time (UTC if no zone)."),
]
UntilOption = Annotated[
    str | None,
    typer.Option(help="Keep events at or before this ISO 8601 time (UTC if no zone)."),
]
PolicyOption = Annotated[
    str | None, typer.Option(help="Keep events of this policy (name or sha256).")
]
ToolOption = Annotated[
    str | None,
    typer.Option(help="Keep events that mention this tool (offered, called, blocked)."),
]
SessionOption = Annotated[str | None, typer.Option(help="Keep events of this session.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, not tables.")]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        help="Show a progress bar. Default: on a terminal, for logs over 32 MiB."
    ),
]


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as err:
        raise InputError(f"{option}: {err}") from err


def _filter(
    since: str | None,
    until: str | None,
    policy: str | None,
    tool: str | None,
    session: str | None,
    request: str | None = None,
) -> EventFilter:
    return EventFilter(
        since=_time(since, "--since"),
        until=_time(until, "--until"),
        policy=policy,
        tool=tool,
        session=session,
        request=request,
    )


@contextmanager
def _progress(paths: list[Path], enabled: bool | None) -> Iterator[Any]:
    """Yield a progress callback for :class:`LogReader`, or ``None``."""
    sizes = {path: path.stat().st_size for path in paths if path.is_file()}
    if enabled is None:
        enabled = stderr.is_terminal and sum(sizes.values()) >= PROGRESS_MIN_BYTES
    if not enabled:
        yield None
        return

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as progress:
        tasks = {
            path: progress.add_task(escape(path.name), total=size)
            for path, size in sizes.items()
        }

        def update(path: Path, done: int, total: int) -> None:
            task = tasks.get(path)
            if task is not None:
                progress.update(task, completed=done, total=total)

        yield update


def _reader(logs: list[Path], event_filter: EventFilter, callback: Any) -> LogReader:
    for path in logs:
        if not path.is_file():
            raise InputError(f"audit log {path} not found; pass an existing file")
    return LogReader(list(logs), filter=event_filter, progress=callback)


def _read(reader: LogReader, wanted: Iterable[str] | None) -> Iterator[dict[str, Any]]:
    reader.wanted = frozenset(wanted) if wanted is not None else None
    try:
        yield from reader.events()
    except OSError as err:
        raise InputError(str(err)) from err


def _report_problems(reader: LogReader) -> None:
    """Print read problems; exit 2 when a line other than the last was invalid."""
    for problem in reader.truncated:
        stderr.print(f"[yellow]warning:[/] {escape(str(problem))}", soft_wrap=True)
    invalid = reader.invalid
    for problem in invalid[:20]:
        stderr.print(f"[bold red]error:[/] {escape(str(problem))}", soft_wrap=True)
    if len(invalid) > 20:
        stderr.print(f"[bold red]error:[/] {len(invalid) - 20} more invalid lines")
    if invalid:
        stderr.print(
            f"{len(invalid)} invalid line(s) skipped; the result above leaves "
            "them out. Repair or remove those lines to get a complete result."
        )
        raise typer.Exit(EXIT_INPUT)


@audit_app.command("summary")
def audit_summary(
    logs: LogsArgument,
    as_json: JsonOption = False,
    since: SinceOption = None,
    until: UntilOption = None,
    policy: PolicyOption = None,
    tool: ToolOption = None,
    session: SessionOption = None,
    progress: ProgressOption = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Rows per table for tools and sessions.")
    ] = 20,
) -> None:
    """Count requests, blocked calls, alerts and blocked-mass percentiles."""
    from guardrail.audit.summary import summarize

    try:
        event_filter = _filter(since, until, policy, tool, session)
        with _progress(logs, progress) as callback:
            reader = _reader(logs, event_filter, callback)
            summary = summarize(
                _read(reader, {"request_completed", "blocked_mass_alert"})
            )
    except GuardrailError as err:
        fail(err)

    data = summary.to_json()
    data["read"] = {
        "lines": reader.lines,
        "events": reader.counts,
        "invalid_lines": len(reader.invalid),
        "truncated": [str(problem) for problem in reader.truncated],
    }
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        _print_summary(data, limit)
    _report_problems(reader)


def _print_summary(data: dict[str, Any], limit: int) -> None:
    console = _console()
    overall = data["overall"]
    console.print(
        "policy p50..max: percentiles of each request's peak mass that the policy "
        "blocked (denied or invented tools, argument values over a policy limit); "
        "peak p90: of its peak blocked mass on any step",
        style="dim",
    )
    console.print(
        f"[bold]{overall['requests']}[/] requests in "
        f"[bold]{overall['sessions']}[/] sessions, "
        f"{overall['blocked_calls']} blocked calls, {overall['violations']} "
        f"violations, {overall['alerts']} alerts "
        f"({data['read']['lines']} lines read)"
    )
    console.print(_group_table("policy", data["policies"], limit))
    tools = dict(
        sorted(
            data["tools"].items(),
            key=lambda kv: (kv[1]["blocked_calls"], kv[1]["policy_mass"]["max"]),
            reverse=True,
        )
    )
    console.print(_group_table("tool", tools, limit))
    sessions = dict(
        sorted(
            data["sessions"].items(),
            key=lambda kv: (kv[1]["alerts"], kv[1]["policy_mass"]["max"]),
            reverse=True,
        )
    )
    console.print(_group_table("session", sessions, limit))

    invented = Table(title="top invented tool names", title_justify="left")
    for column in ("name", "requests", "max mass"):
        invented.add_column(column, justify="left" if column == "name" else "right")
    for entry in overall["top_invented"]:
        invented.add_row(
            escape(entry["name"]), str(entry["requests"]), f"{entry['max_mass']:.3f}"
        )
    console.print(invented)


def _group_table(kind: str, groups: dict[str, Any], limit: int) -> Table:
    title = f"per {kind}"
    if len(groups) > limit:
        title += f" (first {limit} of {len(groups)})"
    table = Table(title=title, title_justify="left")
    table.add_column(kind, overflow="fold")
    for column in ("requests", "calls", "blocked", "violations", "alerts"):
        table.add_column(column, justify="right")
    for column in ("p50", "p90", "p99", "max"):
        table.add_column(f"policy {column}", justify="right")
    table.add_column("peak p90", justify="right")
    for name, stats in list(groups.items())[:limit]:
        pushed = stats["policy_mass"]
        table.add_row(
            escape(name),
            str(stats["requests"]),
            str(stats["calls"]),
            str(stats["blocked_calls"]),
            str(stats["violations"]),
            str(stats["alerts"]),
            *(f"{pushed[key]:.3f}" for key in ("p50", "p90", "p99", "max")),
            f"{stats['blocked_mass']['p90']:.3f}",
        )
    return table


def _console() -> Console:
    """Return a stdout console; tables get 140 columns when not on a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=140)
    return console


@audit_app.command("show")
def audit_show(
    log: Annotated[list[Path], typer.Argument(help="Audit logs.", show_default=False)],
    session: Annotated[
        str | None, typer.Option(help="The session to tell the story of.")
    ] = None,
    request: Annotated[
        str | None, typer.Option(help="The request to tell the story of.")
    ] = None,
    min_mass: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Show steps with at least this mass."),
    ] = 0.1,
    as_json: JsonOption = False,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Show the step-by-step story of one session or one request."""
    from guardrail.audit.story import collect_stories, render_stories

    try:
        if (session is None) == (request is None):
            raise InputError("give exactly one of --session ID and --request ID")
        event_filter = _filter(since, until, None, None, session, request)
        reader = _reader(log, event_filter, None)
        if as_json:
            for event in _read(reader, None):
                sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
            _report_problems(reader)
            return
        stories = collect_stories(_read(reader, None))
    except GuardrailError as err:
        fail(err)

    if not stories:
        what = f"session {session}" if session else f"request {request}"
        stderr.print(f"[bold red]error:[/] no events of {escape(what)} in the logs")
        _report_problems(reader)
        raise typer.Exit(EXIT_INPUT)
    render_stories(stories, _console(), min_mass=min_mass)
    _report_problems(reader)


@audit_app.command("report")
def audit_report(
    logs: LogsArgument,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")],
    since: SinceOption = None,
    until: UntilOption = None,
    policy: PolicyOption = None,
    tool: ToolOption = None,
    session: SessionOption = None,
    progress: ProgressOption = None,
) -> None:
    """Write a self-contained HTML report with charts (no network needed)."""
    from guardrail.audit.report import build_report

    try:
        event_filter = _filter(since, until, policy, tool, session)
        with _progress(logs, progress) as callback:
            readers: list[LogReader] = []

            def read(
                wanted: frozenset[str], sessions: frozenset[str] | None
            ) -> Iterator[dict[str, Any]]:
                reader = _reader(logs, event_filter, callback)
                reader.sessions = sessions
                readers.append(reader)
                return _read(reader, wanted)

            page = build_report(
                read,
                sources=[str(path) for path in logs],
                problems=lambda: [str(p) for p in readers[0].problems[:20]],
            )
        output.write_text(page, encoding="utf-8")
    except OSError as err:
        fail(InputError(f"cannot write the report to {output}: {err}"))
    except GuardrailError as err:
        fail(err)

    stderr.print(f"report written to {escape(str(output))} ({len(page)} bytes)")
    _report_problems(readers[0])


@audit_app.command("replay")
def audit_replay(
    logs: LogsArgument,
    policy_file: Annotated[
        Path, typer.Option("--policy", help="The new policy YAML to evaluate.")
    ],
    as_json: JsonOption = False,
    since: SinceOption = None,
    until: UntilOption = None,
    logged_policy: Annotated[
        str | None,
        typer.Option("--logged-policy", help="Replay only requests of this policy."),
    ] = None,
    tool: ToolOption = None,
    session: SessionOption = None,
    progress: ProgressOption = None,
) -> None:
    """Show what a new policy would have decided on the logged requests."""
    from guardrail.audit.replay import replay_events
    from guardrail.policy.loader import load_policy

    try:
        new_policy = load_policy(policy_file)
        event_filter = _filter(since, until, logged_policy, tool, session)
        with _progress(logs, progress) as callback:
            reader = _reader(logs, event_filter, callback)
            report = replay_events(new_policy, _read(reader, {"request_completed"}))
    except GuardrailError as err:
        fail(err)

    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print_replay(report)
    _report_problems(reader)


def _print_replay(report: Any) -> None:
    console = _console()
    console.print(
        f"policy [bold]{escape(report.policy)}[/] ({report.policy_sha256[:12]}): "
        f"{report.replayed} requests replayed, {len(report.outcomes)} decide "
        f"differently, {report.calls_now_blocked} logged calls would now be "
        f"blocked, {report.calls_now_allowed} would now pass"
    )
    if report.skipped:
        console.print(
            f"{report.skipped} requests skipped: their log has no replay fields "
            "(request_tools, history)"
        )
    for failure in report.failed:
        console.print(f"[red]could not replay[/] {escape(failure)}")
    if not report.outcomes:
        return

    table = Table(title="requests the new policy decides differently")
    for column in ("time", "session", "request", "allowed now", "change", "calls"):
        table.add_column(column)
    for outcome in report.outcomes:
        change = []
        if outcome.added:
            change.append("+ " + ", ".join(outcome.added))
        if outcome.removed:
            change.append("- " + ", ".join(outcome.removed))
        calls = [
            f"BLOCKED {c['name']}: {'; '.join(c['reasons'])}"
            for c in outcome.blocked_calls
        ]
        calls += [f"now passes {c['name']}" for c in outcome.unblocked_calls]
        table.add_row(
            escape(outcome.timestamp[:19]),
            escape(outcome.session_id),
            escape(outcome.request_id),
            escape(", ".join(outcome.allowed) or "none"),
            escape("\n".join(change)),
            escape("\n".join(calls)),
        )
    console.print(table)
