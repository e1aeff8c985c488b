"""``guardrail serve``: run the OpenAI-compatible proxy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from guardrail.errors import GuardrailError

if TYPE_CHECKING:
    from guardrail.proxy.app import ProxyRuntime
    from guardrail.proxy.config import ProxyConfig

__all__ = ["configure_logging", "serve"]


def serve(
    policy_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of policy YAML files. Default: policies."),
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="Base URL of a vLLM server with guardrail's logits processor, "
            "such as http://127.0.0.1:8000/v1."
        ),
    ] = None,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            help="Run the model in this process (transformers) instead of "
            "forwarding to an upstream.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="Proxy configuration file (.yaml, .yml or .toml)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint folder: the tokenizer for prompts and, with "
            "--embedded, the model. Default: the prepared SmolLM2-135M-Instruct."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on. Default: 127.0.0.1.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port to listen on. Default: 8080.")
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(help="Append audit JSON lines to this file. Default: stderr."),
    ] = None,
) -> None:
    """Serve POST /v1/chat/completions with every tool call guarded.

    Settings come from --config, then GUARDRAIL_PROXY_* environment
    variables, then these options (options win). Without bindings in the
    configuration, each policy serves the model name equal to its name.
    """
    from guardrail.cli.main import fail
    from guardrail.proxy.config import load_config

    overrides = {
        "policy_dir": policy_dir,
        "upstream": upstream,
        "embedded": True if embedded else None,
        "model_dir": model,
        "host": host,
        "port": port,
        "audit_log": audit_log,
    }
    try:
        _check_installed()
        settings = load_config(config, overrides=overrides)
        configure_logging()
        runtime = _build(settings)
    except GuardrailError as err:
        fail(err)

    import uvicorn

    from guardrail.proxy.app import create_app

    uvicorn.run(
        create_app(runtime),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def _check_installed() -> None:
    import importlib.util

    from guardrail.errors import InputError

    missing = [
        name
        for name in ("fastapi", "uvicorn", "httpx", "prometheus_client")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise InputError(
            f"the proxy needs {', '.join(missing)}, which are not installed: "
            "run pip install 'guardrail[proxy]'"
        )


def _build(settings: ProxyConfig) -> ProxyRuntime:
    from guardrail.models.prepare import default_model_dir, is_prepared
    from guardrail.proxy.app import build_runtime

    if settings.model_dir is None and not is_prepared(default_model_dir()):
        from guardrail.cli.main import _prepare

        _prepare(default_model_dir(), force=False)
    return build_runtime(settings)


def configure_logging() -> None:
    """Send structlog events and uvicorn's errors to stderr as JSON lines."""
    from guardrail.cli.common import configure_logging as configure

    configure()
