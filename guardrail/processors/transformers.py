"""A transformers ``LogitsProcessor`` around the shared masking core.

transformers calls custom processors before its temperature, top-k and
top-p warpers (transformers 5.19, ``GenerationMixin._get_logits_processor``),
so the blocked mass is measured at temperature 1 as the audit defines it.
Beam search is not supported: beams reorder rows between steps, which the
per-row matchers cannot follow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from guardrail.processors.core import SequenceGuard, TokenMasker

__all__ = ["GuardrailLogitsProcessor"]


class GuardrailLogitsProcessor(LogitsProcessor):
    """Masks each row of a ``generate`` batch with its own guard.

    ``guards[i]`` guards batch row ``i``; ``None`` leaves the row unguarded.
    The processor reads the tokens sampled since its last call from
    ``input_ids`` and feeds them to the row's matcher before masking.
    """

    def __init__(self, masker: TokenMasker, guards: Sequence[SequenceGuard | None]):
        self.masker = masker
        self.guards = list(guards)
        self._prompt_length: int | None = None

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor
    ) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.guards):
            raise ValueError(
                f"batch has {input_ids.shape[0]} rows but {len(self.guards)} guards; "
                "beam search and num_return_sequences > 1 are not supported"
            )
        if self._prompt_length is None:
            self._prompt_length = input_ids.shape[1]

        generated = input_ids.shape[1] - self._prompt_length
        if generated > 0:
            last = input_ids[:, -1].tolist()
            for guard, token in zip(self.guards, last, strict=True):
                if guard is not None and len(guard.tokens) < generated:
                    guard.accept_token(int(token))

        self.masker.apply(scores, self.guards)
        return scores
