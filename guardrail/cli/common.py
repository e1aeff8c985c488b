"""Helpers shared by the CLI command modules: console, exit codes, input files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from guardrail.errors import GuardrailError, InputError

__all__ = [
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "configure_logging",
    "fail",
    "read_json",
    "stderr",
]

stderr = Console(stderr=True, highlight=False)

EXIT_INTERNAL = 1
EXIT_INPUT = 2


def fail(err: GuardrailError) -> NoReturn:
    code = EXIT_INPUT if isinstance(err, InputError) else EXIT_INTERNAL
    kind = "invalid input" if code == EXIT_INPUT else "error"
    stderr.print(
        f"[bold red]{kind}:[/] {escape(str(err))}", markup=True, soft_wrap=True
    )
    raise typer.Exit(code)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file; every way it can be unreadable is a RequestError."""
    from guardrail.errors import RequestError

    try:
        data = path.read_bytes()
    except OSError as err:
        raise RequestError(f"cannot read {what} file {path}: {err.strerror}") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(
            f"{path}: not UTF-8 (invalid byte at offset {err.start}); save the "
            f"{what} file as UTF-8"
        ) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(
            f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg})"
        ) from err
    except RecursionError as err:
        raise RequestError(
            f"{path}: JSON nested too deeply to read; flatten the {what} file"
        ) from err


def configure_logging() -> None:
    """Send structlog events as JSON lines to stderr.

    Unconfigured structlog prints to stdout, where its lines would mix into
    the JSON or tables a command prints. Python logging (uvicorn, vLLM) goes
    to stderr at WARNING and above.
    """
    import logging
    import sys

    import structlog

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        logger_factory=_stderr_logger,
        # Not cached: each event looks up sys.stderr again, so a stream that
        # was replaced and closed (as test runners do) is never written to.
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def _stderr_logger(*_args: Any) -> Any:
    import sys

    import structlog

    return structlog.PrintLogger(sys.stderr)
