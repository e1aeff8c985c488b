"""In-process generation with transformers: the default without a GPU.

Loads any Hugging Face causal-LM checkpoint folder (local files only, never
a hub download) and runs ``generate`` with :class:`GuardrailLogitsProcessor`.
SmolLM2-135M generates 12-14 tokens/s on one CPU core pair (measured on a
2-core x86-64 machine), so a tool call of 40 tokens takes about 3 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.errors import ModelError

if TYPE_CHECKING:
    from guardrail.audit.log import AuditSink
    from guardrail.guard import EnforcementMode, Guard, GuardedResult
    from guardrail.policy.model import Policy
    from guardrail.request import ChatRequest

__all__ = ["TransformersBackend"]


class TransformersBackend:
    """A loaded model and tokenizer, ready to serve guarded requests."""

    engine = "transformers"

    def __init__(self, model_dir: str | Path, *, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"no Hugging Face checkpoint in {folder} (config.json missing); run "
                "`guardrail model prepare` or pass --model with a checkpoint folder"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                folder, local_files_only=True
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32
            ).to(device)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the model in {folder}: {err}") from err

        self.model.eval()
        self.device = device
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.model_dir = folder

    def guard(self, policy: Policy, **options: Any) -> Guard:
        """Return a :class:`Guard` bound to this model's tokenizer and vocabulary."""
        from guardrail.guard import Guard

        return Guard(policy, self.tokenizer, vocab_size=self.vocab_size, **options)

    def generate(
        self,
        guard: Guard,
        request: ChatRequest,
        *,
        sink: AuditSink | None,
        mode: EnforcementMode | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> GuardedResult:
        """Generate one guarded assistant turn for ``request``.

        ``temperature`` 0 is greedy decoding. Audit events go to ``sink``
        (none are written when it is ``None``).
        """
        import torch
        from transformers import LogitsProcessorList

        from guardrail.processors.core import TokenMasker
        from guardrail.processors.transformers import GuardrailLogitsProcessor

        prepared = guard.prepare(request, mode=mode, request_id=request_id)
        audit = guard.open_audit(prepared, sink, engine=self.engine) if sink else None
        sequence = guard.new_sequence(prepared, audit)
        masker = TokenMasker(
            self.vocab_size,
            guard.compiler.eos_token_id,
            lambda token: guard.compiler.tokenizer.decode_str([token]),
        )
        processor = GuardrailLogitsProcessor(masker, [sequence])

        encoded = self.tokenizer(
            prepared.prompt, return_tensors="pt", add_special_tokens=False
        ).to(self.device)
        if seed is not None:
            torch.manual_seed(seed)

        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling.update(temperature=temperature, top_k=0, top_p=1.0)
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                logits_processor=LogitsProcessorList([processor]),
                eos_token_id=guard.compiler.eos_token_id,
                pad_token_id=guard.compiler.eos_token_id,
                **sampling,
            )

        new_tokens = output[0, encoded["input_ids"].shape[1] :].tolist()
        stopped = bool(new_tokens) and new_tokens[-1] == guard.compiler.eos_token_id
        if stopped:
            sequence.accept_token(new_tokens[-1])
            new_tokens = new_tokens[:-1]
        # Special tokens stay in the text: a call marker may be one of them.
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=False)

        return guard.finish(
            prepared, text, stopped=stopped, sequence=sequence, audit=audit
        )
