"""Guarded generation with vLLM's offline ``LLM`` API.

:func:`prepare_vllm_request` turns (policy, chat request) into what vLLM
needs: the rendered prompt and ``SamplingParams`` whose ``extra_args`` carry
the :class:`~guardrail.spec.GuardSpec`. The same ``vllm_xargs`` dictionary
goes into the ``extra_body`` of an OpenAI client that talks to ``vllm serve``.

:class:`VLLMBackend` owns an ``LLM`` with the guardrail processor loaded and
runs whole requests: prepare, ``LLM.generate`` on the prompt that the
guard's tool-call format renders (or ``LLM.chat`` with the model's own chat
template), then :meth:`Guard.finish` for the parsed calls and
post-validation. Inside the engine, the processor
writes the ``decode_step`` and ``request_completed`` audit events to the file
named by ``GUARDRAIL_AUDIT_LOG`` (stderr when unset), so ``Guard.finish`` is
called without an audit here and each request has one summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.errors import ModelError
from guardrail.spec import GuardSpec

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams
    from vllm.inputs import TokensPrompt

    from guardrail.guard import EnforcementMode, Guard, GuardedResult, PreparedRequest
    from guardrail.policy.model import Policy
    from guardrail.request import ChatRequest

__all__ = ["VLLMBackend", "VLLMRequest", "prepare_vllm_request"]


@dataclass(frozen=True)
class VLLMRequest:
    """A prepared request in vLLM's terms.

    ``prompt_token_ids`` is the rendered prompt tokenized without added
    special tokens, as the transformers backend feeds it. ``vllm_xargs`` is
    the per-request dictionary for ``SamplingParams(extra_args=...)`` or the
    OpenAI client's ``extra_body={"vllm_xargs": ...}``.
    """

    prepared: PreparedRequest
    spec: GuardSpec
    prompt_token_ids: list[int]

    @property
    def vllm_xargs(self) -> dict[str, str]:
        return self.spec.to_vllm_xargs()

    @property
    def prompt(self) -> TokensPrompt:
        """The prompt in the form ``LLM.generate`` takes."""
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=list(self.prompt_token_ids))

    def sampling_params(
        self,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        **options: Any,
    ) -> SamplingParams:
        """Return ``SamplingParams`` that carry the guard spec.

        ``temperature`` 0 is greedy decoding; ``options`` go to
        ``SamplingParams`` unchanged (``logprobs``, ``stop_token_ids``, ...).
        """
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            extra_args=self.vllm_xargs,
            **options,
        )


def prepare_vllm_request(
    guard: Guard,
    request: ChatRequest,
    *,
    mode: EnforcementMode | None = None,
    request_id: str | None = None,
) -> VLLMRequest:
    """Evaluate the policy for ``request`` and build its vLLM arguments.

    Raises what :meth:`Guard.prepare` raises: :class:`PolicyError` when the
    policy does not fit the request's tools and :class:`RequestError` when a
    tool schema cannot be enforced.
    """
    prepared = guard.prepare(request, mode=mode, request_id=request_id)
    spec = GuardSpec.from_actions(
        prepared.actions,
        policy_object=guard.policy,
        session=prepared.session,
        request_tools=[tool.function.name for tool in request.tools],
        request_id=prepared.request_id,
        session_id=prepared.session.id,
        policy=guard.policy.name,
        policy_sha256=guard.policy.sha256,
        mode=prepared.mode,
        format=guard.format.name,
        alert_threshold=guard.alert_threshold,
    )
    token_ids = guard.hf_tokenizer(prepared.prompt, add_special_tokens=False)[
        "input_ids"
    ]
    return VLLMRequest(prepared=prepared, spec=spec, prompt_token_ids=list(token_ids))


class VLLMBackend:
    """An in-process vLLM engine with the guardrail processor loaded.

    ``engine_options`` go to ``vllm.LLM`` (``enforce_eager``, ``dtype``,
    ``max_model_len``, ...). The processor is always named in
    ``logits_processors``, so vLLM rejects set-ups it cannot guard at start
    (speculative decoding) instead of skipping it.
    """

    engine = "vllm"

    def __init__(
        self, model_dir: str | Path, *, llm: LLM | None = None, **engine_options: Any
    ) -> None:
        from transformers import AutoTokenizer

        from guardrail.processors.vllm import GuardrailLogitsProcessor

        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"no Hugging Face checkpoint in {folder} (config.json missing); run "
                "`guardrail model prepare` or pass a checkpoint folder"
            )
        self.model_dir = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

        if llm is None:
            from vllm import LLM

            processors = list(engine_options.pop("logits_processors", None) or [])
            if GuardrailLogitsProcessor not in processors:
                processors.append(GuardrailLogitsProcessor)
            llm = LLM(model=str(folder), logits_processors=processors, **engine_options)
        self.llm = llm
        self.vocab_size = int(llm.llm_engine.model_config.get_vocab_size())

    def guard(self, policy: Policy, **options: Any) -> Guard:
        """Return a :class:`Guard` bound to this model's tokenizer and vocabulary."""
        from guardrail.guard import Guard

        return Guard(policy, self.tokenizer, vocab_size=self.vocab_size, **options)

    def generate(
        self,
        guard: Guard,
        request: ChatRequest,
        *,
        mode: EnforcementMode | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> GuardedResult:
        """Generate one guarded assistant turn for ``request``."""
        prepared = prepare_vllm_request(
            guard, request, mode=mode, request_id=request_id
        )
        params = prepared.sampling_params(
            max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        return self.run(guard, [prepared], [params])[0]

    def chat(
        self,
        guard: Guard,
        request: ChatRequest,
        *,
        mode: EnforcementMode | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> GuardedResult:
        """Generate one guarded turn with ``LLM.chat`` and the model's chat template.

        For models whose chat template renders ``tools`` in the layout of the
        guard's tool-call format. The grammar is the same as in
        :meth:`generate`; only the prompt differs. SmolLM2's template ignores
        ``tools``, so with that model the prompt contains no tool list.
        """
        prepared = prepare_vllm_request(
            guard, request, mode=mode, request_id=request_id
        )
        params = prepared.sampling_params(
            max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        body = request.model_dump(mode="json", exclude_none=True)
        outputs = self.llm.chat(
            body["messages"], params, use_tqdm=False, tools=body.get("tools") or None
        )
        self.flush_audit()
        return self._finish(guard, prepared, outputs[0])

    def run(
        self,
        guard: Guard,
        requests: Sequence[VLLMRequest],
        params: Sequence[SamplingParams],
    ) -> list[GuardedResult]:
        """Generate all ``requests`` in one vLLM batch and finish each one.

        ``params[i]`` must carry ``requests[i].vllm_xargs`` (see
        :meth:`VLLMRequest.sampling_params`).
        """
        if len(requests) != len(params):
            raise ValueError(
                f"got {len(requests)} requests but {len(params)} SamplingParams; "
                "pass one SamplingParams per request"
            )
        prompts = [request.prompt for request in requests]
        outputs = self.llm.generate(prompts, list(params), use_tqdm=False)
        self.flush_audit()

        return [
            self._finish(guard, request, output)
            for request, output in zip(requests, outputs, strict=True)
        ]

    def _finish(
        self, guard: Guard, request: VLLMRequest, output: RequestOutput
    ) -> GuardedResult:
        completion = output.outputs[0]
        return guard.finish(
            request.prepared,
            completion.text,
            stopped=completion.finish_reason == "stop",
            sequence=None,
            audit=None,
        )

    def flush_audit(self) -> None:
        """Let an in-process engine take finished requests out of its batch.

        vLLM removes a finished request from the batch at its next step. A
        server's engine runs that step by itself; an in-process engine
        (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) runs it only when asked, and
        the processor writes ``request_completed`` only then.
        """
        from vllm.v1.engine.core_client import InprocClient

        engine = self.llm.llm_engine
        client = engine.engine_core
        if not isinstance(client, InprocClient) or engine.has_unfinished_requests():
            return
        if client.engine_core.scheduler.has_requests():
            engine.step()
