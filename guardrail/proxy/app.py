"""The FastAPI application: routes, error bodies, start-up and shutdown.

:func:`build_runtime` does the slow, fallible work (policies, audit sink,
tokenizer or model) before the server starts, so a bad configuration ends
the command with a clear message instead of a half-started server.
:func:`create_app` wires the routes to that runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from guardrail.proxy.config import ConfigError, ProxyConfig
from guardrail.proxy.engine import EmbeddedEngine, Engine, ObservedAuditSink
from guardrail.proxy.errors import ProxyError, error_body
from guardrail.proxy.metrics import ProxyMetrics
from guardrail.proxy.policies import PolicyDirectory
from guardrail.proxy.responses import completion_body, stream_chunks
from guardrail.proxy.service import ChatService, new_request_id

if TYPE_CHECKING:
    from guardrail.backends.transformers import TransformersBackend
    from guardrail.proxy.upstream import UpstreamEngine

__all__ = ["ProxyRuntime", "build_runtime", "create_app"]

log = structlog.get_logger("guardrail.proxy")


@dataclass
class ProxyRuntime:
    config: ProxyConfig
    policies: PolicyDirectory
    engine: Engine
    sink: ObservedAuditSink
    metrics: ProxyMetrics
    service: ChatService

    @property
    def upstream(self) -> UpstreamEngine | None:
        from guardrail.proxy.upstream import UpstreamEngine

        return self.engine if isinstance(self.engine, UpstreamEngine) else None


def build_runtime(
    config: ProxyConfig,
    *,
    backend: TransformersBackend | None = None,
    hf_tokenizer: Any = None,
) -> ProxyRuntime:
    """Load policies, open the audit sink and set up the engine.

    ``backend`` (embedded mode) and ``hf_tokenizer`` (upstream mode) reuse a
    model or tokenizer already loaded instead of reading ``model_dir``.
    Raises a :class:`GuardrailError` subclass on any invalid setting.
    """
    policies = PolicyDirectory(config.policy_dir)
    unknown = sorted({b.policy for b in config.bindings} - set(policies.names()))
    if unknown:
        raise ConfigError(
            f"bindings name policies that are not in {config.policy_dir}: "
            f"{', '.join(unknown)}; loaded: {', '.join(policies.names())}"
        )

    sink = ObservedAuditSink(config.audit_log)
    engine = _load_engine(config, sink, backend, hf_tokenizer)
    metrics = ProxyMetrics()
    service = ChatService(config, policies, engine, sink, metrics)
    return ProxyRuntime(config, policies, engine, sink, metrics, service)


def _load_engine(
    config: ProxyConfig,
    sink: ObservedAuditSink,
    backend: TransformersBackend | None,
    hf_tokenizer: Any,
) -> Engine:
    from guardrail.models.prepare import default_model_dir

    model_dir = Path(config.model_dir or default_model_dir())
    if config.embedded:
        if backend is None:
            from guardrail.backends.transformers import TransformersBackend

            backend = TransformersBackend(model_dir)
        return EmbeddedEngine(backend, sink)

    from guardrail.proxy.upstream import UpstreamEngine

    if hf_tokenizer is None:
        hf_tokenizer = _load_tokenizer(model_dir)
    return UpstreamEngine(
        config.upstream_url,
        hf_tokenizer,
        api=config.upstream_api,
        model=config.upstream_model,
        timeout_s=config.upstream_timeout_s,
        probe_interval_s=config.probe_interval_s,
        alert_threshold=config.alert_threshold,
    )


def _load_tokenizer(model_dir: Path) -> Any:
    from guardrail.errors import ModelError

    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load the tokenizer in {model_dir}: {err}; set model_dir to "
            "the checkpoint folder of the upstream's model"
        ) from err


def create_app(runtime: ProxyRuntime) -> FastAPI:
    """Return the ASGI app serving ``runtime``."""
    config = runtime.config

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        del app
        upstream = runtime.upstream
        if upstream is not None:
            state = await upstream.probe()
            log.info("upstream_checked", upstream=upstream.base_url, **state.as_dict())
        reloader = asyncio.create_task(_reload_policies(runtime))
        log.info(
            "proxy_started",
            engine=runtime.engine.name,
            policies=runtime.policies.versions(),
            models=runtime.service.bindings.model_names,
        )
        try:
            yield
        finally:
            reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloader
            if upstream is not None:
                await upstream.close()
            runtime.sink.close()
            log.info(
                "proxy_stopped",
                audit_written=runtime.sink.written,
                audit_failed=runtime.sink.failed,
            )

    app = FastAPI(title="guardrail proxy", lifespan=lifespan, docs_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        del request
        message = f"{err.detail}: check the method and path (POST /v1/chat/completions)"
        return JSONResponse(
            error_body(message, "invalid_request_error", code=str(err.status_code)),
            status_code=err.status_code,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        request_id = new_request_id(request.headers.get("x-request-id"))
        headers = {"x-request-id": request_id}
        try:
            raw = await _read_body(request, config.max_body_bytes)
            served = await runtime.service.complete(raw, request.headers, request_id)
        except ProxyError as err:
            if err.status == 413:
                # Rejected while reading, before the pipeline saw the request.
                runtime.service.record_rejection(err, request_id)
            return JSONResponse(err.body(), status_code=err.status, headers=headers)

        if not served.options.stream:
            return JSONResponse(completion_body(served.completion), headers=headers)
        chunks = stream_chunks(
            served.completion, include_usage=served.options.include_usage
        )
        return StreamingResponse(
            chunks,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "guardrail"}
                for name in runtime.service.bindings.model_names
            ],
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body, healthy = await _health(runtime)
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, stopping as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProxyError(
                413,
                f"request body exceeds the proxy's limit of {limit} bytes "
                "(max_body_bytes); send fewer or shorter messages",
                code="body_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _health(runtime: ProxyRuntime) -> tuple[dict[str, Any], bool]:
    upstream = runtime.upstream
    engine: dict[str, Any] = {"name": runtime.engine.name}
    ready = True
    if upstream is not None:
        with contextlib.suppress(ProxyError):
            await upstream.ensure_ready()
        engine.update(url=upstream.base_url, **upstream.state.as_dict())
        ready = upstream.state.status == "loaded"
    else:
        engine["processor_loaded"] = True

    sink = runtime.sink
    audit = {
        "sink": sink.name,
        "healthy": sink.healthy,
        "written": sink.written,
        "failed": sink.failed,
        "last_error": sink.last_error,
    }
    policies = runtime.policies.versions()
    healthy = ready and sink.healthy and bool(policies)
    body = {
        "status": "ok" if healthy else "unavailable",
        "policies": policies,
        "engine": engine,
        "audit": audit,
    }
    return body, healthy


async def _reload_policies(runtime: ProxyRuntime) -> None:
    """Poll the policy folder; count applied and rejected reloads."""
    interval = runtime.config.policy_reload_interval_s
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            result = await anyio.to_thread.run_sync(runtime.policies.reload)
        except OSError as err:
            runtime.metrics.policy_reloads.labels("rejected").inc()
            log.error("policy_reload_failed", error=str(err))
            continue
        if result.errors:
            runtime.metrics.policy_reloads.labels("rejected").inc(len(result.errors))
        if result.changed:
            runtime.metrics.policy_reloads.labels("applied").inc()
            runtime.service.refresh_bindings()
