"""The masking core shared by every engine backend.

One :class:`SequenceGuard` per generated sequence owns its llguidance
matcher. :class:`TokenMasker` takes a batch of float logits and the guards of
its rows and, in one pass per step:

1. fills an int32 bitmask row per guarded sequence (llguidance, on the CPU),
2. unpacks it to a boolean allowed set on the logits' device,
3. computes the blocked mass ``1 - exp(logsumexp(z[A]) - logsumexp(z))`` and
   the most likely blocked tokens from the logits as received, before any
   mask of ours,
4. sets blocked logits to ``-inf`` in enforce mode (nothing in shadow mode).

No row is ever left all ``-inf``: when the matcher allows nothing (an error
state), end of sequence is the only allowed token, and the step record marks it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from llguidance import LLMatcher
from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

__all__ = ["BlockedToken", "SequenceGuard", "StepRecord", "TokenMasker"]

_MASKED = "masked"
_EOS_ONLY = "eos_only"
_FORCED = "forced"


@dataclass(frozen=True)
class BlockedToken:
    token_id: int
    text: str
    probability: float


@dataclass(frozen=True)
class StepRecord:
    """Record of the mask at one decoding step of one sequence.

    ``blocked_mass`` is in [0, 1] at temperature 1. ``forced_eos`` marks a
    step where nothing was allowed and end of sequence was forced.
    """

    step: int
    blocked_mass: float
    allowed_tokens: int
    top_blocked: tuple[BlockedToken, ...]
    forced_eos: bool = False


StepListener = Callable[["SequenceGuard", StepRecord], None]


@dataclass(eq=False)
class SequenceGuard:
    """State of one guarded sequence: its matcher and what it has seen.

    ``enforce`` False is shadow mode: masks are computed and audited but not
    applied. The first sampled token the grammar rejects is recorded as
    ``violation_step``, and after it nothing more can be measured.
    """

    matcher: LLMatcher
    enforce: bool = True
    listener: StepListener | None = None
    step: int = 0
    tokens: list[int] = field(default_factory=list)
    violation_step: int | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        """True while masks can still be computed for this sequence."""
        return not self.matcher.is_stopped() and not self.matcher.is_error()

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()

    def accept_token(self, token_id: int) -> None:
        """Advance the matcher by a sampled token.

        In enforce mode a rejected token means the engine sampled outside the
        mask; the guard then records the error and forces end of sequence.
        """
        self.tokens.append(token_id)
        if not self.active:
            return
        if self.matcher.consume_token(token_id):
            return
        if self.enforce:
            self.error = f"token {token_id} was sampled outside the mask"
        else:
            self.violation_step = self.step - 1

    def record(self, step: StepRecord) -> None:
        self.step += 1
        if self.listener is not None:
            self.listener(self, step)


class TokenMasker:
    """Applies the masks of a batch of guards to a batch of logits.

    ``vocab_size`` is the logits width; ``decode`` turns a token id into
    display text for the audit. ``top_blocked`` is how many blocked
    candidates each step keeps.
    """

    def __init__(
        self,
        vocab_size: int,
        eos_token_id: int,
        decode: Callable[[int], str],
        *,
        top_blocked: int = 5,
    ) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.decode = decode
        self.top_blocked = top_blocked
        self._bitmask = allocate_token_bitmask(1, vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def apply(
        self, logits: torch.Tensor, guards: Sequence[SequenceGuard | None]
    ) -> list[StepRecord | None]:
        """Mask ``logits`` in place, row ``i`` by ``guards[i]``; return step records.

        Rows without a guard are not touched. An enforcing guard whose grammar
        is complete or in error allows only end of sequence; a shadow guard
        in that state is skipped. Cost: one llguidance mask per guarded row
        (about 10-500 us) plus a few vectorized passes over ``[rows, vocab]``.
        """
        records: list[StepRecord | None] = [None] * len(guards)
        rows = [i for i, guard in enumerate(guards) if guard is not None]
        if not rows:
            return records

        bitmask = self._bitmask_for(len(rows))
        eos_only: list[bool] = []
        forced: list[bool] = []
        for slot, row in enumerate(rows):
            state = self._fill_row(guards[row], bitmask, slot)
            eos_only.append(state != _MASKED)
            forced.append(state == _FORCED)

        allowed = self._unpack(bitmask.to(logits.device, non_blocking=True))
        for slot, only_eos in enumerate(eos_only):
            if only_eos:
                allowed[slot].zero_()
                allowed[slot, self.eos_token_id] = True

        index = torch.tensor(rows, device=logits.device)
        scores = logits.index_select(0, index).float()
        masses, top_values, top_ids = self._measure(scores, allowed)

        for slot, row in enumerate(rows):
            guard = guards[row]
            if guard is None or (not guard.enforce and not guard.active):
                continue
            if guard.enforce:
                logits[row].masked_fill_(~allowed[slot], float("-inf"))
            record = self._record(
                guard,
                masses[slot],
                allowed[slot],
                top_values[slot],
                top_ids[slot],
                forced=forced[slot],
            )
            records[row] = record
            guard.record(record)

        return records

    def _bitmask_for(self, rows: int) -> torch.Tensor:
        if self._bitmask.shape[0] < rows:
            self._bitmask = allocate_token_bitmask(rows, self.vocab_size)
        return self._bitmask[:rows]

    def _fill_row(
        self, guard: SequenceGuard | None, bitmask: torch.Tensor, slot: int
    ) -> str:
        """Fill one bitmask row; return whether it is a mask or end of sequence only.

        An enforcing guard whose matcher has stopped (the grammar is complete)
        or failed allows only end of sequence: a guarded row is never left
        unmasked, whatever state its matcher is in.
        """
        if guard is None:
            return _EOS_ONLY
        if guard.error is not None:
            return _FORCED
        if guard.matcher.is_error():
            guard.error = guard.matcher.get_error()
            return _FORCED
        if guard.matcher.is_stopped():
            return _EOS_ONLY

        fill_next_token_bitmask(guard.matcher, bitmask, slot)
        if guard.matcher.is_error():
            guard.error = guard.matcher.get_error()
            return _FORCED
        if not bool(bitmask[slot].any()):
            guard.error = "the grammar allows no token at this step"
            return _FORCED
        return _MASKED

    def _unpack(self, bitmask: torch.Tensor) -> torch.Tensor:
        # Moved once per device, not once per step: on a GPU each .to() copies.
        if self._shifts.device != bitmask.device:
            self._shifts = self._shifts.to(bitmask.device)
        bits = (bitmask.unsqueeze(-1) >> self._shifts) & 1
        return bits.bool().flatten(1)[:, : self.vocab_size]

    def _measure(
        self, scores: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[list[float], list[list[float]], list[list[int]]]:
        negative_inf = torch.tensor(float("-inf"), device=scores.device)
        total = torch.logsumexp(scores, dim=-1)
        kept = torch.logsumexp(torch.where(allowed, scores, negative_inf), dim=-1)
        # expm1 keeps precision when almost nothing or almost everything is blocked.
        masses = (-torch.expm1(kept - total)).clamp(0.0, 1.0)

        blocked_scores = torch.where(allowed, negative_inf, scores)
        k = min(self.top_blocked, scores.shape[-1])
        values, ids = torch.topk(blocked_scores, k, dim=-1)
        probabilities = torch.exp(values - total.unsqueeze(-1))
        return masses.tolist(), probabilities.tolist(), ids.tolist()

    def _record(
        self,
        guard: SequenceGuard,
        mass: float,
        allowed_row: torch.Tensor,
        probabilities: list[float],
        token_ids: list[int],
        *,
        forced: bool,
    ) -> StepRecord:
        top = tuple(
            BlockedToken(token_id=t, text=self.decode(t), probability=p)
            for t, p in zip(token_ids, probabilities, strict=True)
            if p > 0.0
        )
        return StepRecord(
            step=guard.step,
            blocked_mass=mass,
            allowed_tokens=int(allowed_row.sum()),
            top_blocked=top,
            forced_eos=forced,
        )
