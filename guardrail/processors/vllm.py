"""The guardrail logits processor inside vLLM's V1 engine (vLLM 0.32).

vLLM loads :class:`GuardrailLogitsProcessor` from the ``vllm.logits_processors``
entry point, from ``LLM(logits_processors=[...])`` or from ``--logits-processors
guardrail.processors.vllm:GuardrailLogitsProcessor``. A request is guarded when
its ``SamplingParams.extra_args`` carries a :class:`~guardrail.spec.GuardSpec`
(the HTTP field ``vllm_xargs``); every other request is left untouched.

vLLM calls the processor once per engine step:

- ``update_state`` with the batch changes: new rows, removed rows and rows
  moved or swapped by vLLM's batch compaction. A row that a move or an add
  overwrites has left the batch even when ``removed`` does not list it.
- ``apply`` with float32 logits ``[rows, vocabulary]`` after vLLM's
  allowed-token and bad-word masks, ``min_tokens`` and ``logit_bias``, and
  before penalties and temperature (``Sampler.apply_logits_processors``), so
  the blocked mass is measured at temperature 1. Each guarded row first
  consumes the tokens committed since the last step from the request's live
  ``output_token_ids`` list, then :class:`~guardrail.processors.core.TokenMasker`
  masks it.

A row that leaves the batch is either finished (its last token is a stop
token, or it reached ``max_tokens``) and gets its ``request_completed``
audit event at once, or it is parked. A preempted request comes back with
the same ``SamplingParams`` object, and its matcher is rebuilt from the
committed tokens. A parked row is completed as ``abort`` when vLLM frees its
``SamplingParams`` (stop string, client disconnect) or when the batch
becomes empty.

Engine set-ups the processor cannot guard are rejected at start: Model
Runner V2, speculative decoding, and async scheduling with the processor
loaded only from the entry point (see :func:`check_engine_config`).

NOTE: with speculative decoding, vLLM 0.32 builds no entry-point processor
at all (``build_logitsprocs`` in vllm/v1/sample/logits_processor/__init__.py),
so guarded requests would run without the mask. Only a processor named in
``logits_processors`` makes vLLM reject that engine, so always name it.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import structlog
import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from guardrail.audit.alerts import AlertMonitor
from guardrail.audit.attribution import StepAttributor, ToolCatalog
from guardrail.audit.log import AuditSink, RequestAudit
from guardrail.errors import AuditError, GuardrailError
from guardrail.grammar.compiler import GrammarCompiler
from guardrail.grammar.formats import get_format
from guardrail.processors.core import SequenceGuard, StepRecord, TokenMasker
from guardrail.spec import GuardSpec, spec_from_extra_args
from guardrail.validation import validate_output

try:
    from vllm.v1.worker.gpu.sample.logits_processor import (
        LogitsProcessor as RunnerV2LogitsProcessor,
    )
except ImportError:  # a vLLM without Model Runner V2
    RunnerV2LogitsProcessor = None

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

__all__ = [
    "AUDIT_LOG_ENV",
    "ENGINE",
    "PROCESSOR_PATH",
    "GuardrailLogitsProcessor",
    "check_engine_config",
]

ENGINE = "vllm"
AUDIT_LOG_ENV = "GUARDRAIL_AUDIT_LOG"
PROCESSOR_PATH = "guardrail.processors.vllm:GuardrailLogitsProcessor"

# vLLM writes -1 into output_token_ids for a token that async scheduling has
# sampled but not yet copied back to the host.
PLACEHOLDER_TOKEN = -1

FinishReason = Literal["stop", "length", "tool_calls", "abort"]

log = structlog.get_logger(__name__)


def _bases() -> tuple[type, ...]:
    # Subclassing the Model Runner V2 interface too makes vLLM construct this
    # class under V2, so it can reject V2 with its own message instead of
    # vLLM's generic "V1-interface plugins are not supported".
    if RunnerV2LogitsProcessor is None:
        return (LogitsProcessor,)
    return (LogitsProcessor, RunnerV2LogitsProcessor)


def check_engine_config(vllm_config: VllmConfig) -> None:
    """Raise ``ValueError`` for an engine set-up the processor cannot guard.

    - Speculative decoding: a draft token is sampled without the mask, and
      vLLM 0.32 rejects custom V1 processors with it anyway.
    - Async scheduling with the processor loaded only from the entry point:
      vLLM then leaves placeholder ids (-1) in ``output_token_ids`` when the
      processor runs, because it repairs them only for processors named in
      ``logits_processors`` (``InputBatch.update_async_output_token_ids``).
    """
    if vllm_config.speculative_config is not None:
        raise ValueError(
            "guardrail cannot guard requests with speculative decoding: draft "
            "tokens are proposed without the mask. Start vLLM without "
            "--speculative-config to serve guarded requests."
        )

    async_scheduling = bool(vllm_config.scheduler_config.async_scheduling)
    if async_scheduling and not _named_in(vllm_config.model_config.logits_processors):
        raise ValueError(
            "guardrail was loaded from its entry point while async scheduling "
            "is on, and vLLM then passes placeholder token ids (-1) to the "
            f"processor. Add --logits-processors {PROCESSOR_PATH} (or "
            "logits_processors=[GuardrailLogitsProcessor] for LLM), or pass "
            "--no-async-scheduling."
        )


def _named_in(processors: Any) -> bool:
    for entry in processors or ():
        if isinstance(entry, type) and issubclass(entry, GuardrailLogitsProcessor):
            return True
        if isinstance(entry, str) and entry.strip() == PROCESSOR_PATH:
            return True
    return False


@lru_cache(maxsize=256)
def _grammar_problem(format_name: str, grammar: str) -> str:
    del format_name  # part of the cache key only
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error else ""


class _EngineTools:
    """The tokenizer, grammar compilers and masker of one model.

    Built once per tokenizer and shared by every processor instance in the
    process, because vLLM may build several (a rebuilt batch, the entry
    point and ``logits_processors`` together). The llguidance tokenizer
    takes about 0.5 s to build for a 49,152-token vocabulary.
    """

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self._compilers: dict[str, GrammarCompiler] = {}
        hermes = self.compiler("hermes")
        self.eos_token_id = hermes.eos_token_id
        self.masker = TokenMasker(
            vocab_size,
            hermes.eos_token_id,
            lambda token: hermes.tokenizer.decode_str([token]),
        )

    def compiler(self, format_name: str) -> GrammarCompiler:
        """Return the grammar compiler for a tool-call format, built on first use."""
        compiler = self._compilers.get(format_name)
        if compiler is None:
            compiler = GrammarCompiler(
                self.hf_tokenizer, get_format(format_name), vocab_size=self.vocab_size
            )
            self._compilers[format_name] = compiler
        return compiler


@lru_cache(maxsize=4)
def _engine_tools(
    tokenizer: str, revision: str | None, trust_remote_code: bool, vocab_size: int
) -> _EngineTools:
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(
        tokenizer, revision=revision, trust_remote_code=trust_remote_code
    )
    return _EngineTools(hf_tokenizer, vocab_size)


@dataclass(eq=False)
class _Row:
    """One guarded request in the batch.

    ``params`` is a weak reference: its identity marks a preempted request
    that comes back, and once it is freed, vLLM has dropped the request.
    ``pending`` is the step record of the last ``apply``, kept until the
    next token arrives. vLLM samples and discards a token for a request whose
    prompt is still being prefilled in chunks, and such a step is not audited.
    """

    spec: GuardSpec
    params: weakref.ref[SamplingParams]
    output_ids: list[int]
    guard: SequenceGuard
    audit: RequestAudit | None
    stop_ids: frozenset[int]
    max_tokens: int | None
    pending: StepRecord | None = None
    pending_at: int = 0


class GuardrailLogitsProcessor(*_bases()):  # type: ignore[misc]
    """Masks every request that carries a guard spec, one matcher per request.

    Constructed by vLLM in the worker process with ``(vllm_config, device,
    is_pin_memory)`` (V1) or ``(vllm_config, req_states)`` (Model Runner V2,
    rejected). Audit events go to the file named by ``GUARDRAIL_AUDIT_LOG``
    or to stderr, with ``engine`` set to ``vllm``.
    """

    # The last batch change taken, and by which instance (see _shares_update).
    _last_update: tuple[weakref.ref[BatchUpdate], int] | None = None

    def __init__(self, vllm_config: VllmConfig, *args: Any) -> None:
        if len(args) != 2:
            raise ValueError(
                "guardrail implements vLLM's V1 logits-processor interface, but "
                "Model Runner V2 is active and would run requests without the "
                "mask. Start vLLM with VLLM_USE_V2_MODEL_RUNNER=0 to serve "
                "guarded requests."
            )
        check_engine_config(vllm_config)

        model_config = vllm_config.model_config
        self._tools = _engine_tools(
            model_config.tokenizer,
            model_config.tokenizer_revision,
            bool(model_config.trust_remote_code),
            int(model_config.get_vocab_size()),
        )
        self._hf_tokenizer = self._tools.hf_tokenizer
        self._masker = self._tools.masker
        self._eos_token_id = self._tools.eos_token_id

        self._writes_audit = _is_first_tensor_parallel_rank()
        self._sink = AuditSink(os.environ.get(AUDIT_LOG_ENV) or None)
        self._rows: dict[int, _Row] = {}
        self._parked: dict[int, _Row] = {}
        self._freed: list[_Row] = []
        self._duplicate = False
        log.info(
            "guardrail_processor_started",
            model=model_config.model,
            vocab_size=self._tools.vocab_size,
            audit_log=self._sink.name,
            writes_audit=self._writes_audit,
        )

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject a request whose guard spec is invalid (HTTP 400 in the server).

        Runs in vLLM's front end: parses the spec, checks the sampling
        options the processor cannot follow, and checks that the spec's
        grammar compiles (about 1-30 ms for a new grammar, cached after).
        """
        try:
            spec = spec_from_extra_args(sampling_params.extra_args)
        except GuardrailError as err:
            raise ValueError(str(err)) from err
        if spec is None:
            return

        if sampling_params.n != 1:
            raise ValueError(
                f"n={sampling_params.n} is not supported for a guarded request, "
                "because each guard spec audits one sequence. Send n=1 and "
                "repeat the request instead."
            )
        if sampling_params.thinking_token_budget is not None:
            raise ValueError(
                "thinking_token_budget is not supported for a guarded request, "
                "because vLLM forces the end-of-thinking tokens after the "
                "guardrail mask. Remove thinking_token_budget."
            )
        try:
            tool_format = get_format(spec.format)
        except ValueError as err:
            raise ValueError(f"$.vllm_xargs.guardrail.format: {err}") from err
        grammar = tool_format.build_grammar(spec.actions())
        problem = _grammar_problem(spec.format, grammar)
        if problem:
            raise ValueError(
                f"$.vllm_xargs.guardrail.tools: the grammar engine rejected the "
                f"allowed tools {[tool.name for tool in spec.tools]}: {problem}"
            )

    def is_argmax_invariant(self) -> bool:
        """Return False: the mask changes the greedy choice, so vLLM must call it."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow vLLM's batch changes: removed, then added, then moved rows."""
        self._complete_freed()
        if batch_update is None or self._duplicate:
            return
        if self._shares_update(batch_update):
            return

        for index in batch_update.removed:
            self._release(index)

        for index, params, _prompt_ids, output_ids in batch_update.added:
            self._release(index)
            row = self._admit(params, output_ids)
            if row is not None:
                self._rows[index] = row

        for source, target, direction in batch_update.moved:
            moving = self._rows.pop(source, None)
            if direction == MoveDirectionality.SWAP:
                other = self._rows.pop(target, None)
                if other is not None:
                    self._rows[source] = other
            else:
                self._release(target)
            if moving is not None:
                self._rows[target] = moving

        for index in [i for i in self._rows if i >= batch_update.batch_size]:
            self._release(index)
        if batch_update.batch_size == 0:
            for row in list(self._parked.values()):
                self._complete(row)
            self._parked.clear()

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """Mask the guarded rows of ``logits`` in place and audit each step."""
        del ctx
        if self._duplicate or not self._rows:
            return logits

        rows = logits.shape[0]
        guards: list[SequenceGuard | None] = [None] * rows
        for index, row in self._rows.items():
            if index >= rows:
                # Only speculative decoding or a changed vLLM batch layout
                # could cause this. Masking the wrong rows would be worse
                # than stopping the engine.
                raise RuntimeError(
                    f"guardrail: the logits have {rows} rows but guarded request "
                    f"{row.spec.request_id!r} is in row {index}"
                )
            self._sync(row)
            guards[index] = row.guard

        self._masker.apply(logits, guards)
        return logits

    def _shares_update(self, batch_update: BatchUpdate) -> bool:
        """Return True, and stop this instance, if another one took ``batch_update``.

        vLLM builds one instance from the entry point and one more for each
        time the class is named in ``logits_processors``, and hands each
        batch change to all of them in turn. The first one to take a change
        masks and audits; the others stop before any request reaches them.
        A rebuilt batch gets new instances and new updates, so an instance
        from an earlier batch never stops a current one.
        """
        cls = type(self)
        last = cls._last_update
        if last is not None and last[0]() is batch_update and last[1] != id(self):
            self._duplicate = True
            self._rows.clear()
            self._parked.clear()
            log.info("guardrail_processor_duplicate_stopped")
            return True
        cls._last_update = (weakref.ref(batch_update), id(self))
        return False

    def _admit(self, params: SamplingParams, output_ids: list[int]) -> _Row | None:
        """Return the row state of a request entering the batch, or None if unguarded.

        A request coming back from preemption has tokens in ``output_ids``
        already. Its matcher is rebuilt from them and its audit continues.
        """
        parked = self._parked.pop(id(params), None)
        if parked is not None and parked.params() is params:
            parked.output_ids = output_ids
            parked.guard = self._new_guard(parked.spec, output_ids)
            parked.guard.listener = self._listener(parked)
            log.info(
                "guarded_request_resumed",
                request_id=parked.spec.request_id,
                committed_tokens=len(output_ids),
            )
            return parked

        try:
            spec = spec_from_extra_args(params.extra_args)
        except GuardrailError as err:
            # validate_params has accepted this spec in the front end, so
            # this is an engine fault: end the sequence rather than guess.
            log.error("guard_spec_invalid_in_engine", error=str(err))
            return self._failed_row(params, output_ids, str(err))
        if spec is None:
            return None

        audit = self._open_audit(spec)
        stop_ids = frozenset(params.all_stop_token_ids) | {self._eos_token_id}
        row = _Row(
            spec=spec,
            params=weakref.ref(params, self._on_params_freed),
            output_ids=output_ids,
            guard=self._new_guard(spec, output_ids),
            audit=audit,
            stop_ids=stop_ids,
            max_tokens=params.max_tokens,
        )
        row.guard.listener = self._listener(row)
        return row

    def _new_guard(self, spec: GuardSpec, committed: list[int]) -> SequenceGuard:
        """Build a matcher for ``spec`` and advance it over the committed tokens."""
        try:
            compiler = self._tools.compiler(spec.format)
            grammar = compiler.compile(spec.actions(), spec.policy_sha256)
            matcher = compiler.new_matcher(grammar)
        except (GuardrailError, ValueError) as err:
            log.error(
                "guard_grammar_failed_in_engine",
                request_id=spec.request_id,
                error=str(err),
            )
            return SequenceGuard(matcher=self._empty_matcher(), error=str(err))

        guard = SequenceGuard(matcher=matcher, enforce=spec.mode == "enforce")
        for step, token in enumerate(committed):
            if token == PLACEHOLDER_TOKEN:
                guard.error = "a committed token is a placeholder (-1)"
                break
            guard.step = step + 1
            guard.accept_token(token)
        guard.step = len(guard.tokens)
        return guard

    def _failed_row(
        self, params: SamplingParams, output_ids: list[int], error: str
    ) -> _Row:
        spec = GuardSpec(
            request_id="unknown",
            policy="unknown",
            policy_sha256="",
            tool_choice="none",
        )
        guard = SequenceGuard(matcher=self._empty_matcher(), error=error)
        return _Row(
            spec=spec,
            params=weakref.ref(params, self._on_params_freed),
            output_ids=output_ids,
            guard=guard,
            audit=None,
            stop_ids=frozenset({self._eos_token_id}),
            max_tokens=params.max_tokens,
        )

    def _empty_matcher(self) -> llguidance.LLMatcher:
        compiler = self._tools.compiler("hermes")
        return llguidance.LLMatcher(
            compiler.tokenizer, '%llguidance {}\nstart: ""\n', log_level=0
        )

    def _open_audit(self, spec: GuardSpec) -> RequestAudit | None:
        """Return the audit of ``spec``, with attribution and alerts.

        The spec carries the policy's decisions, the request's tool names,
        the policy's argument limits and the latest untrusted result, so
        the steps are attributed as in the in-process path. A spec without
        them still gets attribution, with every tool outside the allowed
        set counted as invented.
        """
        if not self._writes_audit:
            return None
        catalog = ToolCatalog.from_decisions(
            {tool.name: tool.parameters for tool in spec.tools},
            spec.decisions,
            mode=spec.tool_choice,
            policy_arguments=spec.policy_arguments,
            request_tools=spec.request_tools,
        )
        try:
            decode_bytes = self._tools.compiler(spec.format).tokenizer.decode_bytes
        except (GuardrailError, ValueError) as err:
            # The grammar step reports the same fault on the row; the
            # audit still records the steps, without attribution.
            log.error(
                "guard_attribution_unavailable",
                request_id=spec.request_id,
                error=str(err),
            )
            attributor = None
        else:
            attributor = StepAttributor(catalog, decode_bytes)
        return RequestAudit(
            sink=self._sink,
            request_id=spec.request_id,
            session_id=spec.session_id,
            policy=spec.policy,
            policy_sha256=spec.policy_sha256,
            mode=spec.mode,
            engine=ENGINE,
            alert_threshold=spec.alert_threshold,
            attributor=attributor,
            alerts=AlertMonitor(spec.alert_threshold, spec.untrusted_result),
        )

    def _listener(self, row: _Row):
        def hold(guard: SequenceGuard, record: StepRecord) -> None:
            del guard
            row.pending = record
            row.pending_at = len(row.output_ids)

        return hold

    def _sync(self, row: _Row) -> None:
        """Settle the pending step record and feed newly committed tokens."""
        self._settle(row)
        guard = row.guard
        for token in row.output_ids[len(guard.tokens) :]:
            if token == PLACEHOLDER_TOKEN:
                guard.error = (
                    "vLLM passed a placeholder token id (-1) for a sampled token"
                )
                break
            guard.accept_token(token)

    def _settle(self, row: _Row) -> None:
        record = row.pending
        if record is None:
            return
        row.pending = None
        if len(row.output_ids) > row.pending_at:
            self._write_step(row, record)
        else:
            # The step's token was discarded (chunked prefill): its number
            # is used again by the next step.
            row.guard.step -= 1

    def _write_step(self, row: _Row, record: StepRecord) -> None:
        if row.audit is None:
            return
        try:
            row.audit.on_step(row.guard, record)
        except AuditError as err:
            log.error(
                "audit_write_failed", request_id=row.spec.request_id, error=str(err)
            )

    def _release(self, index: int) -> None:
        """Take the row at ``index`` out of the batch: complete it or park it."""
        row = self._rows.pop(index, None)
        if row is None:
            return
        self._sync(row)

        params = row.params()
        if params is None or self._finish_reason(row) != "abort":
            self._complete(row)
            return
        self._parked[id(params)] = row

    def _on_params_freed(self, reference: weakref.ref[Any]) -> None:
        # Called by the garbage collector; writing the summary waits for the
        # next update_state call so it never runs in an arbitrary frame.
        for key, row in list(self._parked.items()):
            if row.params is reference:
                del self._parked[key]
                self._freed.append(row)

    def _complete_freed(self) -> None:
        while self._freed:
            self._complete(self._freed.pop())

    def _finish_reason(self, row: _Row) -> FinishReason:
        tokens = row.guard.tokens
        if tokens and tokens[-1] in row.stop_ids:
            return "stop"
        if row.max_tokens is not None and len(tokens) >= row.max_tokens:
            return "length"
        return "abort"

    def _complete(self, row: _Row) -> None:
        """Write the ``request_completed`` event of a request that left the batch."""
        self._settle(row)
        if row.audit is None:
            return

        reason = self._finish_reason(row)
        tokens = row.guard.tokens
        if reason == "stop":
            tokens = tokens[:-1]
        text = self._hf_tokenizer.decode(tokens, skip_special_tokens=True)
        output = get_format(row.spec.format).parse_output(text)
        # A turn cut short (token limit, stop string, client gone) is judged
        # on its complete calls only, as Guard.finish judges it; the engine
        # returns every output, so withholding calls is the caller's part.
        complete = reason == "stop"
        validation = validate_output(output, row.spec.actions(), complete=complete)
        if complete and output.calls and output.error is None:
            reason = "tool_calls"

        try:
            row.audit.complete(
                finish_reason=reason,
                allowed_tools=[tool.name for tool in row.spec.tools],
                tool_choice_mode=row.spec.tool_choice,
                calls=[
                    {"name": call.name, "arguments": call.arguments}
                    for call in output.calls
                ],
                validation_passed=validation.passed,
                validation_errors=list(validation.errors),
                policy_violated=not validation.passed
                or row.guard.violation_step is not None,
                truncated=not complete,
                violation_step=row.guard.violation_step,
                engine_error=row.guard.error,
                generated_tokens=len(row.guard.tokens),
            )
        except AuditError as err:
            log.error(
                "audit_write_failed", request_id=row.spec.request_id, error=str(err)
            )


def _is_first_tensor_parallel_rank() -> bool:
    # Every tensor-parallel rank samples the same tokens and must mask them,
    # but only rank 0 writes the audit, so each event is written once.
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank() == 0
    except (AssertionError, ImportError, RuntimeError):
        return True
