"""Logging set-up of the CLI must survive the streams it was set up with."""

from __future__ import annotations

import io
import sys

import structlog

from guardrail.cli.common import configure_logging


def test_logging_follows_replaced_stderr(monkeypatch):
    """A closed stderr from an earlier run is never written to again."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging()
    structlog.get_logger("t").warning("first_event")
    first.close()

    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    structlog.get_logger("t").warning("second_event")

    assert "second_event" in second.getvalue()
