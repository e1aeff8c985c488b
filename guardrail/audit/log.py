"""Audit events as structlog JSON lines.

Two event names, both with ``schema_version`` and the join keys
``request_id``, ``session_id``, ``policy``, ``policy_sha256``, ``mode`` and
``engine``:

- ``decode_step``: one per guarded decoding step: ``step``,
  ``blocked_mass``, ``allowed_tokens``, ``top_blocked`` (token id, text,
  probability) and ``forced_eos`` when nothing was allowed.
- ``request_completed``: one per request: max and sum of the blocked mass,
  the steps above the alert threshold, the calls, whether post-validation
  passed and, in shadow mode, whether the output violated the policy.

A sink counts what it writes. A write that fails raises
:class:`AuditError` and marks the sink unhealthy, so no record is lost
without the caller knowing.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from guardrail.errors import AuditError

if TYPE_CHECKING:
    from guardrail.processors.core import SequenceGuard, StepRecord

__all__ = ["SCHEMA_VERSION", "AuditSink", "RequestAudit"]

SCHEMA_VERSION = 1


class AuditSink:
    """A JSON-lines destination: a file path (appended to) or an open stream."""

    def __init__(self, target: str | Path | IO[str] | None = None) -> None:
        self._owned = False
        if target is None:
            self._stream: IO[str] = sys.stderr
            self.name = "<stderr>"
        elif isinstance(target, str | Path):
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = path.open("a", encoding="utf-8")
            except OSError as err:
                raise AuditError(
                    f"cannot open audit log {path}: {err.strerror}; choose a "
                    "writable path with --audit-log"
                ) from err
            self._owned = True
            self.name = str(path)
        else:
            self._stream = target
            self.name = getattr(target, "name", "<stream>")

        self._lock = threading.Lock()
        self.written = 0
        self.failed = 0
        self.last_error: str | None = None
        self._logger = structlog.wrap_logger(
            structlog.WriteLogger(self._stream),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
        )

    @property
    def healthy(self) -> bool:
        return self.failed == 0

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event and flush; raise :class:`AuditError` on failure."""
        with self._lock:
            try:
                self._logger.info(event, schema_version=SCHEMA_VERSION, **fields)
                self._stream.flush()
            except (OSError, ValueError) as err:
                self.failed += 1
                self.last_error = str(err)
                raise AuditError(
                    f"audit event {event!r} could not be written to {self.name}: {err}"
                ) from err
            self.written += 1

    def close(self) -> None:
        if self._owned:
            self._stream.close()


@dataclass
class RequestAudit:
    """Collects the steps of one request and writes its events.

    ``alert_threshold`` is the blocked mass above which a step is listed in
    the summary's ``alert_steps``.
    """

    sink: AuditSink
    request_id: str
    session_id: str
    policy: str
    policy_sha256: str
    mode: str
    engine: str
    alert_threshold: float = 0.5
    steps: int = 0
    mass_max: float = 0.0
    mass_sum: float = 0.0
    alert_steps: list[int] = field(default_factory=list)
    forced_eos_steps: list[int] = field(default_factory=list)

    @property
    def context(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "session_id": self.session_id,
            "policy": self.policy,
            "policy_sha256": self.policy_sha256,
            "mode": self.mode,
            "engine": self.engine,
        }

    def on_step(self, guard: SequenceGuard, record: StepRecord) -> None:
        """Step listener for :class:`SequenceGuard`: write a ``decode_step`` event."""
        del guard
        self.steps += 1
        self.mass_sum += record.blocked_mass
        self.mass_max = max(self.mass_max, record.blocked_mass)
        if record.blocked_mass > self.alert_threshold:
            self.alert_steps.append(record.step)
        if record.forced_eos:
            self.forced_eos_steps.append(record.step)

        fields: dict[str, Any] = {
            **self.context,
            "step": record.step,
            "blocked_mass": round(record.blocked_mass, 6),
            "allowed_tokens": record.allowed_tokens,
            "top_blocked": [
                {
                    "token_id": token.token_id,
                    "text": token.text,
                    "probability": round(token.probability, 6),
                }
                for token in record.top_blocked
            ],
        }
        if record.forced_eos:
            fields["forced_eos"] = True
        self.sink.emit("decode_step", **fields)

    def complete(self, **outcome: Any) -> None:
        """Write the ``request_completed`` summary with ``outcome`` fields."""
        self.sink.emit(
            "request_completed",
            **self.context,
            steps=self.steps,
            blocked_mass_max=round(self.mass_max, 6),
            blocked_mass_sum=round(self.mass_sum, 6),
            alert_threshold=self.alert_threshold,
            alert_steps=self.alert_steps,
            forced_eos_steps=self.forced_eos_steps,
            **outcome,
        )
