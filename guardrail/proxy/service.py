"""One guarded chat completion, from raw body to validated turn.

Steps: decode and check the body, bind the policy, rebuild the session and
evaluate the policy (``Guard.prepare``), hand the spec to the engine,
validate every returned call again, then write one ``proxy_request`` audit
event. That event and the engine's ``decode_step`` / ``request_completed``
records share ``request_id``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import structlog

from guardrail.errors import AuditError, GuardrailError
from guardrail.grammar.formats import ParsedOutput
from guardrail.proxy.binding import BindingTable
from guardrail.proxy.body import RequestOptions, decode_body, read_options
from guardrail.proxy.errors import ProxyError, from_guardrail_error
from guardrail.proxy.responses import Completion
from guardrail.request import parse_chat_request
from guardrail.spec import GuardSpec
from guardrail.validation import validate_output

if TYPE_CHECKING:
    from guardrail.audit.log import AuditSink
    from guardrail.guard import Guard, PreparedRequest
    from guardrail.policy.evaluate import AllowedActions
    from guardrail.policy.model import Policy
    from guardrail.proxy.config import ProxyConfig
    from guardrail.proxy.engine import Engine, EngineResult
    from guardrail.proxy.metrics import ProxyMetrics
    from guardrail.proxy.policies import PolicyDirectory
    from guardrail.session import Session

__all__ = ["ChatService", "ServedRequest", "find_violations", "new_request_id"]

log = structlog.get_logger("guardrail.proxy")

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class ServedRequest:
    completion: Completion
    options: RequestOptions


class ChatService:
    """The request pipeline shared by the streaming and plain responses."""

    def __init__(
        self,
        config: ProxyConfig,
        policies: PolicyDirectory,
        engine: Engine,
        sink: AuditSink,
        metrics: ProxyMetrics,
    ) -> None:
        self.config = config
        self.policies = policies
        self.engine = engine
        self.sink = sink
        self.metrics = metrics
        self.bindings = BindingTable(
            config.bindings, config.binding_header, policies.names()
        )
        self._guards: dict[str, tuple[str, Guard]] = {}
        self._guards_lock = threading.Lock()

    async def complete(
        self, raw: bytes, headers: Mapping[str, str], request_id: str
    ) -> ServedRequest:
        """Serve one request, or raise :class:`ProxyError` with the HTTP error."""
        started = time.perf_counter()
        record: dict[str, Any] = {"request_id": request_id, "engine": self.engine.name}
        try:
            served = await self._serve(raw, headers, request_id, record)
        except ProxyError as err:
            self._finish_failed(err, record, started)
            raise
        except GuardrailError as err:
            mapped = from_guardrail_error(err)
            self._finish_failed(mapped, record, started)
            raise mapped from err

        record.update(status=200, latency_ms=_ms(started))
        try:
            self.sink.emit("proxy_request", **_with_join_keys(record))
        except AuditError as err:
            failed = ProxyError(
                500,
                f"the audit log could not be written, so the result is withheld: {err}",
                type="server_error",
                code="audit_failed",
            )
            self._count_error(failed, record)
            log.error("request_failed", request_id=request_id, error=str(err))
            raise failed from err

        self.metrics.requests.labels(record.get("policy", ""), "200").inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return served

    async def _serve(
        self,
        raw: bytes,
        headers: Mapping[str, str],
        request_id: str,
        record: dict[str, Any],
    ) -> ServedRequest:
        body = decode_body(raw, limit=self.config.max_body_bytes)
        options = read_options(
            body,
            default_max_tokens=self.config.default_max_tokens,
            max_tokens_limit=self.config.max_tokens_limit,
        )
        record["stream"] = options.stream
        self._check_tool_count(body)
        request = parse_chat_request(body)

        bound = self.bindings.resolve(
            _bearer_token(headers.get("authorization")),
            headers.get(self.config.binding_header.lower()),
            options.model,
        )
        policy = self.policies.get(bound.policy)
        if policy is None:
            raise ProxyError(
                503,
                f"policy {bound.policy!r} is bound but not loaded; check the "
                "policy folder and the proxy log for load errors",
                type="server_error",
                code="policy_not_loaded",
            )
        record.update(
            policy=policy.name,
            policy_sha256=policy.sha256,
            binding=bound.selector,
        )

        guard = await anyio.to_thread.run_sync(self._guard_for, policy)
        prepared = await anyio.to_thread.run_sync(
            lambda: guard.prepare(request, request_id=request_id)
        )
        record.update(session_id=prepared.session.id, mode=prepared.mode)
        spec = GuardSpec.from_actions(
            prepared.actions,
            policy_object=policy,
            session=prepared.session,
            request_tools=[tool.function.name for tool in request.tools],
            request_id=request_id,
            session_id=prepared.session.id,
            policy=policy.name,
            policy_sha256=policy.sha256,
            mode=prepared.mode,
            format=guard.format.name,
            alert_threshold=guard.alert_threshold,
        )

        result = await self.engine.generate(guard, prepared, spec, options.generation)
        completion = self._decide(guard.policy, prepared, result, options, record)
        return ServedRequest(completion=completion, options=options)

    def _decide(
        self,
        policy_object: Policy,
        prepared: PreparedRequest,
        result: EngineResult,
        options: RequestOptions,
        record: dict[str, Any],
    ) -> Completion:
        """Validate the engine's output and choose what the caller may see."""
        output = result.output
        # The mask alone decides what find_violations checks without the
        # policy, so a violation there means the engine did not apply it.
        # The policy's own checks (conditions on args, budgets within a turn)
        # run only after generation and can fail on a correctly masked turn.
        mask_violations = find_violations(
            output, prepared.actions, stopped=result.stopped
        )
        violations = mask_violations or find_violations(
            output,
            prepared.actions,
            stopped=result.stopped,
            policy=policy_object,
            session=prepared.session,
        )
        enforce = prepared.mode == "enforce"
        policy = record.get("policy", "")

        record.update(
            calls=[call.name for call in output.calls],
            validation_passed=not violations,
            validation_errors=list(violations),
            blocked_mass_max=result.blocked_mass_max,
        )
        if result.blocked_mass_max is not None:
            self.metrics.blocked_mass.labels(policy).observe(result.blocked_mass_max)

        if violations and enforce:
            withheld = max(1, len(output.calls))
            self.metrics.blocked_calls.labels(policy).inc(withheld)
            record["calls_withheld"] = withheld
            reasons = "; ".join(violations)
            if not mask_violations:
                raise ProxyError(
                    422,
                    f"the generated call breaks the policy and is withheld: {reasons}",
                    code="policy_violation",
                )
            mark_missing = getattr(self.engine, "mark_missing", None)
            if mark_missing is not None:
                mark_missing(reasons)
                raise ProxyError(
                    502,
                    f"the upstream returned output the policy forbids, so it is "
                    f"withheld: {reasons}. The upstream is not applying "
                    "guardrail's logits processor; no request is served until "
                    "it does",
                    code="upstream_guard_violation",
                )
            raise ProxyError(
                500,
                f"the generated output failed post-validation and is withheld: "
                f"{reasons}",
                type="server_error",
                code="guard_violation",
            )

        if not result.stopped:
            # A turn cut by the token limit may end inside a call; never pass
            # a partial call on. Complete calls before it are withheld too,
            # because the turn they belong to is incomplete.
            record["calls_withheld"] = len(output.calls) + int(output.error is not None)
            content: str | None = output.content or None
            calls: tuple[dict[str, Any], ...] = ()
            finish_reason = "length"
        elif output.error is not None:
            content, calls, finish_reason = output.content or None, (), "stop"
        else:
            content = output.content or None
            calls = _openai_calls(output, result.call_ids)
            finish_reason = "tool_calls" if calls else "stop"

        record["finish_reason"] = finish_reason
        return Completion(
            id=f"chatcmpl-{prepared.request_id}",
            model=options.model or "guardrail",
            content=content,
            tool_calls=calls,
            finish_reason=finish_reason,
            usage=result.usage,
            created=int(time.time()),
        )

    def record_rejection(self, err: ProxyError, request_id: str) -> None:
        """Log, count and audit a request rejected before :meth:`complete`."""
        record = {"request_id": request_id, "engine": self.engine.name}
        self._finish_failed(err, record, time.perf_counter())

    def refresh_bindings(self) -> None:
        """Rebuild the binding table after the policy set changed."""
        self.bindings = BindingTable(
            self.config.bindings, self.config.binding_header, self.policies.names()
        )

    def _guard_for(self, policy: Policy) -> Guard:
        """Return the cached guard of this policy version, building it once."""
        with self._guards_lock:
            cached = self._guards.get(policy.name)
            if cached is not None and cached[0] == policy.sha256:
                return cached[1]
            guard = self.engine.new_guard(policy)
            self._guards[policy.name] = (policy.sha256, guard)
            return guard

    def _check_tool_count(self, body: dict[str, Any]) -> None:
        tools = body.get("tools")
        if isinstance(tools, list) and len(tools) > self.config.max_tools:
            raise ProxyError(
                400,
                f"$.tools: {len(tools)} tools exceed the proxy's limit of "
                f"{self.config.max_tools} (max_tools); send only the tools this "
                "step needs, or raise max_tools in the proxy configuration",
                code="too_many_tools",
                param="tools",
            )

    def _finish_failed(
        self, err: ProxyError, record: dict[str, Any], started: float
    ) -> None:
        self._count_error(err, record)
        level = log.error if err.status >= 500 else log.warning
        level(
            "request_failed",
            request_id=record["request_id"],
            status=err.status,
            code=err.code,
            error=err.message,
            policy=record.get("policy"),
        )
        record.update(
            status=err.status,
            error_code=err.code,
            error=err.message,
            latency_ms=_ms(started),
        )
        try:
            self.sink.emit("proxy_request", **_with_join_keys(record))
        except AuditError as audit_err:
            log.error(
                "audit_write_failed",
                request_id=record["request_id"],
                error=str(audit_err),
            )

    def _count_error(self, err: ProxyError, record: dict[str, Any]) -> None:
        self.metrics.errors.labels(err.code or "unknown").inc()
        self.metrics.requests.labels(record.get("policy", ""), str(err.status)).inc()


def find_violations(
    output: ParsedOutput,
    actions: AllowedActions,
    *,
    stopped: bool,
    policy: Policy | None = None,
    session: Session | None = None,
) -> list[str]:
    """Return why ``output`` breaks ``actions``; empty when it does not.

    A finished turn is validated whole. A turn cut by the token limit is
    judged only on its complete calls, since its end is expected to be
    unfinished. With ``policy`` and ``session``, the policy's own checks
    (conditions on arguments, allow-lists, budgets) run on every call too.
    """
    result = validate_output(
        output, actions, policy=policy, session=session, complete=stopped
    )
    return list(result.errors)


_JOIN_KEYS = ("request_id", "session_id", "policy", "policy_sha256", "mode", "engine")


def _with_join_keys(record: dict[str, Any]) -> dict[str, Any]:
    """Give every join key a value, null where the request never got that far."""
    return {**dict.fromkeys(_JOIN_KEYS), **record}


def new_request_id(header: str | None) -> str:
    """Use the caller's ``X-Request-Id`` when it is a safe token, else a new id."""
    if header and REQUEST_ID_PATTERN.fullmatch(header):
        return header
    return f"req-{uuid.uuid4().hex}"


def _openai_calls(
    output: ParsedOutput, ids: tuple[str, ...]
) -> tuple[dict[str, Any], ...]:
    calls = []
    for index, call in enumerate(output.calls):
        call_id = ids[index] if index < len(ids) and ids[index] else ""
        calls.append(
            {
                "id": call_id or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments, ensure_ascii=False),
                },
            }
        )
    return tuple(calls)


def _bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
