"""The engine interface of the proxy, and the in-process (embedded) engine.

An engine takes a prepared request and returns the parsed output. The proxy
validates that output again and builds the response, whatever the engine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from guardrail.audit.log import AuditSink

if TYPE_CHECKING:
    from guardrail.backends.transformers import TransformersBackend
    from guardrail.grammar.formats import ParsedOutput
    from guardrail.guard import Guard, PreparedRequest
    from guardrail.policy.model import Policy
    from guardrail.spec import GuardSpec

__all__ = [
    "EmbeddedEngine",
    "Engine",
    "EngineResult",
    "GenerationOptions",
    "ObservedAuditSink",
]


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings taken from the request body."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def sampling_fields(self) -> dict[str, Any]:
        """Return the fields that are set, in OpenAI request naming."""
        fields = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class EngineResult:
    """One generated turn.

    ``stopped`` is true when generation ended on end of sequence rather
    than the token limit. ``call_ids`` are the upstream's own ids for the
    calls, when it returned parsed ``tool_calls``.
    """

    output: ParsedOutput
    stopped: bool
    usage: dict[str, Any] | None = None
    blocked_mass_max: float | None = None
    call_ids: tuple[str, ...] = field(default=())


class Engine(Protocol):
    name: str

    def new_guard(self, policy: Policy) -> Guard:
        """Return a :class:`Guard` for ``policy`` on this engine's tokenizer."""
        ...

    async def generate(
        self,
        guard: Guard,
        prepared: PreparedRequest,
        spec: GuardSpec,
        options: GenerationOptions,
    ) -> EngineResult:
        """Generate one guarded turn; raise ``ProxyError`` on engine failure."""
        ...


class ObservedAuditSink(AuditSink):
    """An :class:`AuditSink` that keeps each request's blocked-mass maximum.

    The embedded backend writes the ``request_completed`` summary itself;
    reading the maximum from it lets the proxy fill its metrics without a
    second computation.
    """

    def __init__(self, target: Any = None) -> None:
        super().__init__(target)
        self._masses: dict[str, float] = {}
        self._masses_lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        super().emit(event, **fields)
        if event == "request_completed" and "request_id" in fields:
            with self._masses_lock:
                self._masses[fields["request_id"]] = float(
                    fields.get("blocked_mass_max", 0.0)
                )

    def pop_blocked_mass(self, request_id: str) -> float | None:
        with self._masses_lock:
            return self._masses.pop(request_id, None)


class EmbeddedEngine:
    """Generation in this process with the transformers backend.

    Requests run one at a time on a worker thread: one CPU-bound model
    gains nothing from overlapping generations, and the event loop stays
    free for health checks and other requests' validation.
    """

    name = "transformers"

    def __init__(self, backend: TransformersBackend, sink: ObservedAuditSink) -> None:
        self.backend = backend
        self.sink = sink
        self._lock = threading.Lock()

    def new_guard(self, policy: Policy) -> Guard:
        return self.backend.guard(policy)

    async def generate(
        self,
        guard: Guard,
        prepared: PreparedRequest,
        spec: GuardSpec,
        options: GenerationOptions,
    ) -> EngineResult:
        import anyio.to_thread

        def run() -> EngineResult:
            with self._lock:
                result = self.backend.generate(
                    guard,
                    prepared.request,
                    sink=self.sink,
                    mode=prepared.mode,
                    max_tokens=options.max_tokens,
                    temperature=options.temperature or 0.0,
                    seed=options.seed,
                    request_id=prepared.request_id,
                )
            return EngineResult(
                output=result.output,
                stopped=result.finish_reason != "length",
                blocked_mass_max=self.sink.pop_blocked_mass(prepared.request_id),
            )

        del spec
        return await anyio.to_thread.run_sync(run)
