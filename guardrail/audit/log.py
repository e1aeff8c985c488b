"""Audit events as structlog JSON lines.

Three event names, each with ``schema_version``, ``timestamp`` and the join
keys ``request_id``, ``session_id``, ``policy``, ``policy_sha256``, ``mode``
and ``engine``:

- ``decode_step``: one per guarded decoding step: ``step``,
  ``blocked_mass``, ``allowed_tokens``, ``top_blocked`` (token id, text,
  probability), ``forced_eos`` when nothing was allowed and, at steps with
  enough blocked mass, its ``attribution`` (see :mod:`.attribution`).
- ``blocked_mass_alert``: a warning when one step put more than the alert
  threshold on a denied or invented tool (see :mod:`.alerts`).
- ``request_completed``: one per request: max and sum of the blocked mass,
  the steps above the alert threshold, the attribution per target, the
  calls, whether post-validation passed and, in shadow mode, whether the
  output violated the policy, plus the tools and history that
  ``guardrail audit replay`` needs to evaluate another policy.

The JSON Schema of every event is ``guardrail/audit/schema/events.v1.json``.

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
    from guardrail.audit.alerts import AlertMonitor
    from guardrail.audit.attribution import StepAttribution, StepAttributor
    from guardrail.processors.core import SequenceGuard, StepRecord

__all__ = ["SCHEMA_VERSION", "AuditSink", "RequestAudit"]

SCHEMA_VERSION = 1

# Targets listed in a request's ``attribution`` summary, likeliest first;
# invented names vary from step to step, so their number needs a bound.
MAX_SUMMARY_TARGETS = 20


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
    the summary's ``alert_steps``. With an ``attributor``, steps with enough
    blocked mass carry their attribution; with ``alerts``, attributed mass
    on denied or invented tools raises ``blocked_mass_alert`` events.
    ``extra`` fields are added to ``request_completed``.
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
    attributor: StepAttributor | None = None
    alerts: AlertMonitor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    alert_count: int = 0
    _targets: dict[tuple[Any, ...], dict[str, Any]] = field(
        default_factory=dict, repr=False
    )

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
        """Step listener for :class:`SequenceGuard`: write a ``decode_step`` event.

        Also writes a ``blocked_mass_alert`` after it when the step's
        attribution raises one.
        """
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

        attribution = None
        if self.attributor is not None:
            attribution = self.attributor.attribute(record, guard.tokens)
        if attribution is not None:
            fields["attribution"] = attribution.to_json()
            self._collect(attribution, record.step)
        self.sink.emit("decode_step", **fields)

        if attribution is not None and self.alerts is not None:
            for alert in self.alerts.check(attribution, record.step):
                self.alert_count += 1
                self.sink.emit("blocked_mass_alert", **self.context, **alert)

    def _collect(self, attribution: StepAttribution, step: int) -> None:
        for item in attribution.items:
            key = (item.kind, item.tool, item.name, item.argument, item.constraint)
            target = self._targets.get(key)
            if target is None:
                target = {
                    name: value
                    for name, value in item.to_json().items()
                    if name not in {"mass", "example"}
                }
                target.update(max_mass=0.0, sum_mass=0.0, steps=0, max_step=step)
                self._targets[key] = target
            target["steps"] += 1
            target["sum_mass"] += item.mass
            if item.mass > target["max_mass"]:
                target["max_mass"] = item.mass
                target["max_step"] = step
                if item.example is not None:
                    target["example"] = item.example

    def attribution_summary(self) -> list[dict[str, Any]]:
        """Return the attributed targets of this request, likeliest first."""
        ranked = sorted(
            self._targets.values(), key=lambda t: t["max_mass"], reverse=True
        )
        return [
            {
                **target,
                "max_mass": round(target["max_mass"], 6),
                "sum_mass": round(target["sum_mass"], 6),
            }
            for target in ranked[:MAX_SUMMARY_TARGETS]
        ]

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
            attribution=self.attribution_summary(),
            alerts=self.alert_count,
            **{**self.extra, **outcome},
        )
