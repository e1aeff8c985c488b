"""Measure what blocked-mass attribution adds to the per-token path.

One guarded generation of a bait conversation (the customer requests the
deletion of their account, which the policy denies) runs on the real
default model. Its logits are then recomputed in one forward pass, and the
masking loop is replayed on them step by step, with fresh matchers, in
three configurations:

- ``mask``: ``TokenMasker.apply`` and the matcher advance, no audit;
- ``audit``: plus a ``decode_step`` event per step (audit before attribution);
- ``attribution``: plus attribution and alerts (the audit as it ships).

Events go to an in-memory stream, so file I/O is left out of all three.

    .venv/bin/python benchmarks/bench_attribution.py --repeats 20
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "audit"))
os.environ.setdefault("GUARDRAIL_HOME", str(REPO / ".cache" / "guardrail"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=60)
    arguments = parser.parse_args()

    import torch
    from baits import SUPPORT_POLICY, delete_request

    from guardrail.audit.log import AuditSink
    from guardrail.backends.transformers import TransformersBackend
    from guardrail.models.prepare import default_model_dir
    from guardrail.policy.loader import load_policy_text
    from guardrail.processors.core import TokenMasker
    from guardrail.request import parse_chat_request

    torch.set_num_threads(1)
    backend = TransformersBackend(default_model_dir())
    guard = backend.guard(load_policy_text(SUPPORT_POLICY), alert_threshold=0.05)
    request = parse_chat_request(delete_request("s-bench"))

    started = time.perf_counter()
    result = backend.generate(
        guard, request, sink=None, max_tokens=arguments.max_tokens
    )
    generate_seconds = time.perf_counter() - started
    prepared = guard.prepare(request)
    prompt = backend.tokenizer(prepared.prompt, add_special_tokens=False)["input_ids"]
    tokens = backend.tokenizer(result.text, add_special_tokens=False)["input_ids"]
    tokens.append(guard.compiler.eos_token_id)
    with torch.inference_mode():
        logits = backend.model(torch.tensor([prompt + tokens])).logits[0].float()
    step_logits = logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]

    masker = TokenMasker(
        backend.vocab_size,
        guard.compiler.eos_token_id,
        lambda token: guard.compiler.tokenizer.decode_str([token]),
    )

    def run(config: str) -> tuple[list[float], int]:
        stream = io.StringIO()
        sink = AuditSink(stream)
        audit = None
        if config != "mask":
            audit = guard.open_audit(prepared, sink, engine="bench")
            if config == "audit":
                audit.attributor = None
                audit.alerts = None
        sequence = guard.new_sequence(prepared, audit)
        timings: list[float] = []
        for index, token in enumerate(tokens):
            row = step_logits[index : index + 1].clone()
            begin = time.perf_counter_ns()
            masker.apply(row, [sequence])
            sequence.accept_token(token)
            timings.append((time.perf_counter_ns() - begin) / 1000)
        attributed = 0
        if audit is not None and audit.attributor is not None:
            attributed = sum(
                1
                for line in stream.getvalue().splitlines()
                if '"attribution"' in line and '"decode_step"' in line
            )
        return timings, attributed

    results: dict[str, list[float]] = {"mask": [], "audit": [], "attribution": []}
    attributed_steps = 0
    for _ in range(arguments.repeats):
        for config in results:
            timings, attributed = run(config)
            results[config].extend(timings)
            attributed_steps = max(attributed_steps, attributed)

    print(
        f"steps per sequence: {len(tokens)}, attributed: {attributed_steps}, "
        f"repeats: {arguments.repeats}, torch threads: 1"
    )
    print(
        f"generate (model + mask + audit): {generate_seconds:.2f} s for "
        f"{len(tokens)} tokens = {1000 * generate_seconds / len(tokens):.1f} ms/token"
    )
    print(f"{'configuration':<14} {'median us':>10} {'p99 us':>10} {'mean us':>10}")
    for config, timings in results.items():
        ordered = sorted(timings)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        print(
            f"{config:<14} {statistics.median(ordered):>10.1f} {p99:>10.1f} "
            f"{statistics.fmean(ordered):>10.1f}"
        )
    before = statistics.fmean(results["audit"])
    after = statistics.fmean(results["attribution"])
    print(f"attribution adds {after - before:.1f} us per step on average")


if __name__ == "__main__":
    main()
