"""The engine-independent pipeline of one guarded request.

:meth:`Guard.prepare` runs before generation: rebuild the session from the
messages, evaluate the policy into allowed actions, compile the grammar and
render the prompt. :meth:`Guard.finish` runs after: parse the generated
text, validate the calls again, build the OpenAI assistant message and write
the audit summary. Engine backends (transformers, vLLM) call both and own
only the decoding loop in between.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from guardrail.audit.context import open_request_audit
from guardrail.audit.log import AuditSink, RequestAudit
from guardrail.errors import RequestError
from guardrail.grammar.compiler import (
    CompiledGrammar,
    GrammarCompiler,
    check_tool_schemas,
)
from guardrail.grammar.formats import ParsedOutput, ToolCallFormat, get_format
from guardrail.policy.evaluate import AllowedActions, evaluate_policy
from guardrail.policy.lint import raise_for_lint
from guardrail.policy.model import Policy
from guardrail.request import ChatRequest, NamedToolChoice
from guardrail.session import Session, session_from_request
from guardrail.validation import ValidationResult, validate_output

if TYPE_CHECKING:
    from guardrail.processors.core import SequenceGuard

__all__ = ["Guard", "GuardedResult", "PreparedRequest"]

EnforcementMode = Literal["enforce", "shadow"]
FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    request: ChatRequest
    session: Session
    actions: AllowedActions
    grammar: CompiledGrammar
    prompt: str
    mode: EnforcementMode


@dataclass(frozen=True)
class GuardedResult:
    """The outcome of one guarded generation.

    ``message`` is the OpenAI assistant message, or ``None`` when enforce
    mode found that the output breaks the policy, in which case nothing of
    it may be used. A turn cut off by the token limit keeps its text but
    loses its calls; ``calls_withheld`` counts calls left out, the partial
    one included.
    """

    request_id: str
    message: dict[str, Any] | None
    finish_reason: FinishReason
    output: ParsedOutput
    validation: ValidationResult
    text: str
    calls_withheld: int = 0


class Guard:
    """A policy bound to one tokenizer and tool-call format."""

    def __init__(
        self,
        policy: Policy,
        hf_tokenizer: Any,
        *,
        tool_format: str | ToolCallFormat = "hermes",
        vocab_size: int | None = None,
        alert_threshold: float = 0.5,
    ) -> None:
        self.policy = policy
        self.hf_tokenizer = hf_tokenizer
        self.format = (
            get_format(tool_format) if isinstance(tool_format, str) else tool_format
        )
        self.compiler = GrammarCompiler(
            hf_tokenizer, self.format, vocab_size=vocab_size
        )
        self.alert_threshold = alert_threshold

    def prepare(
        self,
        request: ChatRequest,
        *,
        mode: EnforcementMode | None = None,
        request_id: str | None = None,
    ) -> PreparedRequest:
        """Decide what may be generated next and compile it.

        Raises :class:`PolicyError` when the policy does not fit the
        request's tools and :class:`RequestError` when a tool schema cannot
        be enforced.
        """
        raise_for_lint(self.policy, request.tools, strict=False)
        session = session_from_request(request)
        actions = evaluate_policy(self.policy, request, session)
        _reject_denied_named_choice(request, actions)
        check_tool_schemas(request, actions, self.policy)
        grammar = self.compiler.compile(actions, self.policy.sha256)
        prompt = self.format.render_prompt(self.hf_tokenizer, request)

        return PreparedRequest(
            request_id=request_id or f"req-{uuid.uuid4().hex}",
            request=request,
            session=session,
            actions=actions,
            grammar=grammar,
            prompt=prompt,
            mode=mode or self.policy.mode,
        )

    def open_audit(
        self, prepared: PreparedRequest, sink: AuditSink, *, engine: str
    ) -> RequestAudit:
        return open_request_audit(
            sink,
            prepared,
            self.policy,
            engine=engine,
            decode_bytes=self.compiler.tokenizer.decode_bytes,
            alert_threshold=self.alert_threshold,
        )

    def new_sequence(
        self, prepared: PreparedRequest, audit: RequestAudit | None
    ) -> SequenceGuard:
        """Return the guard of one sequence, wired to ``audit`` if given."""
        from guardrail.processors.core import SequenceGuard

        return SequenceGuard(
            matcher=self.compiler.new_matcher(prepared.grammar),
            enforce=prepared.mode == "enforce",
            listener=audit.on_step if audit is not None else None,
        )

    def finish(
        self,
        prepared: PreparedRequest,
        text: str,
        *,
        stopped: bool,
        sequence: SequenceGuard | None,
        audit: RequestAudit | None,
    ) -> GuardedResult:
        """Parse, validate, build the assistant message and write the summary.

        ``stopped`` is True when generation ended on end of sequence and
        False when it hit the token limit.
        """
        output = self.format.parse_output(text)
        validation = validate_output(
            output,
            prepared.actions,
            policy=self.policy,
            session=prepared.session,
            complete=stopped,
        )

        enforce = prepared.mode == "enforce"
        calls_withheld = 0
        message: dict[str, Any] | None = _assistant_message(output)
        if enforce and not validation.passed:
            message = None
            calls_withheld = len(output.calls) + int(output.error is not None)
        elif not stopped:
            # A turn cut by the token limit may end inside a call: its text is
            # returned, its calls never are, since the turn is incomplete.
            calls_withheld = len(output.calls) + int(output.error is not None)
            message = {"role": "assistant", "content": output.content or None}

        finish_reason: FinishReason = "length"
        if stopped:
            has_calls = bool(output.calls) and output.error is None
            finish_reason = "tool_calls" if has_calls else "stop"

        if audit is not None:
            audit.complete(
                finish_reason=finish_reason,
                allowed_tools=list(prepared.actions.tool_names),
                tool_choice_mode=prepared.actions.mode,
                calls=[
                    {"name": call.name, "arguments": call.arguments}
                    for call in output.calls
                ],
                validation_passed=validation.passed,
                validation_errors=list(validation.errors),
                # In shadow mode the grammar also saw the turn: a token it
                # rejected is a violation even when the turn was cut short.
                policy_violated=not validation.passed
                or (sequence is not None and sequence.violation_step is not None),
                truncated=not stopped,
                calls_withheld=calls_withheld,
                violation_step=sequence.violation_step if sequence else None,
                engine_error=sequence.error if sequence else None,
                output_returned=message is not None,
            )

        return GuardedResult(
            request_id=prepared.request_id,
            message=message,
            finish_reason=finish_reason,
            output=output,
            validation=validation,
            text=text,
            calls_withheld=calls_withheld,
        )


def _reject_denied_named_choice(request: ChatRequest, actions: AllowedActions) -> None:
    """Raise when ``tool_choice`` forces a tool the policy denies at this step.

    Generating would then allow only end of sequence, an empty message that
    hides the refusal. The error tells the caller why instead.
    """
    choice = request.tool_choice
    if not isinstance(choice, NamedToolChoice) or actions.tools:
        return
    name = choice.function.name
    reasons = [d.reason for d in actions.decisions if d.tool == name]
    reason = f" ({reasons[0]})" if reasons else ""
    raise RequestError(
        f"tool_choice names {name!r}, which the policy does not allow at this "
        f"step{reason}; choose an allowed tool or 'auto'",
        path="$.tool_choice.function.name",
    )


def _assistant_message(output: ParsedOutput) -> dict[str, Any]:
    if output.error is not None:
        return {"role": "assistant", "content": output.content or None}
    message: dict[str, Any] = {"role": "assistant", "content": output.content or None}
    if output.calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments, ensure_ascii=False),
                },
            }
            for call in output.calls
        ]
    return message
