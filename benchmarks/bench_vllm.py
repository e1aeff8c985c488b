"""Decode throughput of vLLM with guardrail, without it, and with tool_choice=required.

One engine, one set of prompts, three kinds of request in turn:

- ``plain``: no guard spec and no constraint (the processor is loaded but
  leaves the rows alone),
- ``guardrail``: a guard spec in ``extra_args`` (mask, blocked mass, audit),
- ``vllm-required``: vLLM's own structured output with the JSON schema that
  its OpenAI server builds for ``tool_choice="required"``.

The prompts are the tool conversation of ``examples/refund.json`` rendered
in the Hermes layout with the ``support-agent`` policy, repeated ``--batch``
times. Each kind runs ``--repeats`` times after one warm-up, the kinds
taking turns. Decode time
is the time of a run minus the time of the same run with ``max_tokens=1``,
so prefill is not counted. Requests stop at end of sequence, so token counts
differ between kinds; the throughput is decoded tokens per second of decode
time.

Run from the repository root::

    python benchmarks/bench_vllm.py --batch 8 --max-tokens 64

Audit events go to a file under the temporary folder unless
``GUARDRAIL_AUDIT_LOG`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def configure_environment(root: Path) -> None:
    """Keep vLLM's caches, sockets and temporary files under ``root``."""
    folders = {
        "VLLM_CACHE_ROOT": root / "cache",
        "VLLM_CONFIG_ROOT": root / "config",
        "VLLM_RPC_BASE_PATH": root / "rpc",
        "TORCHINDUCTOR_CACHE_DIR": root / "inductor",
        "TMPDIR": root / "tmp",
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(name, str(folder))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("GUARDRAIL_AUDIT_LOG", str(root / "audit.jsonl"))
    # On a shared CPU, two spinning OpenMP threads per process slowed decoding
    # about 8x in this benchmark; set OMP_NUM_THREADS to use more.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The processor rejects Model Runner V2, vLLM 0.32's default on a GPU.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    tempfile.tempdir = None


@dataclass
class Measurement:
    kind: str
    decode_tokens: int
    decode_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds


def machine_description() -> str:
    import torch

    processor = platform.processor() or platform.machine()
    model_name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    lines = [
        f"cpu: {model_name or processor}, {os.cpu_count()} logical cores",
        f"torch: {torch.__version__}, threads {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name(0)}")
    try:
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        lines.append(f"load average (1, 5, 15 min): {load}")
    except OSError:
        pass
    return "\n".join(lines)


def required_schema(request) -> dict:
    """Return the JSON schema vLLM's server uses for ``tool_choice="required"``."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionToolsParam,
    )
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    tools = [
        ChatCompletionToolsParam.model_validate(tool.model_dump(exclude_none=True))
        for tool in request.tools
    ]
    return get_json_schema_from_tools("required", tools, request.parallel_tool_calls)


def timed_run(llm, prompts, params) -> tuple[float, int]:
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return elapsed, sum(len(output.outputs[0].token_ids) for output in outputs)


def measure(llm, prompts, kinds, max_tokens, repeats) -> dict[str, Measurement]:
    """Time full and prefill-only runs of each kind; return the median decode.

    The kinds take turns within each repeat, so a change in the machine's
    load during the benchmark reaches all of them alike.
    """
    for make_params in kinds.values():
        timed_run(llm, prompts, make_params(max_tokens))  # warm-up
    results: dict[str, list[Measurement]] = {kind: [] for kind in kinds}
    for _ in range(repeats):
        for kind, make_params in kinds.items():
            prefill_seconds, _ = timed_run(llm, prompts, make_params(1))
            total_seconds, tokens = timed_run(llm, prompts, make_params(max_tokens))
            decode_seconds = max(total_seconds - prefill_seconds, 1e-9)
            results[kind].append(
                Measurement(kind, tokens - len(prompts), decode_seconds)
            )

    medians = {}
    for kind, runs in results.items():
        runs.sort(key=lambda m: m.tokens_per_second)
        medians[kind] = runs[len(runs) // 2]
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="Hugging Face checkpoint folder (default: the prepared SmolLM2-135M)",
    )
    parser.add_argument("--batch", type=int, default=8, help="prompts per run")
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="token limit per request"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per kind")
    parser.add_argument("--dtype", default="float32", help="model dtype passed to vLLM")
    parser.add_argument(
        "--eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run without torch.compile and CUDA graphs (default: on)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder for vLLM's caches and the audit log (default: a temporary one)",
    )
    args = parser.parse_args(argv)

    root = args.work_dir or Path(tempfile.mkdtemp(prefix="guardrail-bench-"))
    configure_environment(root)

    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from guardrail.backends.vllm import VLLMBackend, prepare_vllm_request
    from guardrail.models.prepare import default_model_dir, prepare_default_model
    from guardrail.policy.loader import load_policy
    from guardrail.request import parse_chat_request

    model_dir = args.model or prepare_default_model(default_model_dir())
    backend = VLLMBackend(
        model_dir,
        enforce_eager=args.eager,
        dtype=args.dtype,
        max_model_len=2048,
        max_num_seqs=max(args.batch, 1),
        distributed_executor_backend="uni",
    )
    policy = load_policy(REPO / "policies" / "support-agent.yaml")
    request = parse_chat_request(
        json.loads((REPO / "examples" / "refund.json").read_text())
    )
    guard = backend.guard(policy)
    prepared = [
        prepare_vllm_request(guard, request, request_id=f"bench-{index}")
        for index in range(args.batch)
    ]
    prompts = [item.prompt for item in prepared]
    schema = required_schema(request)

    def plain(max_tokens: int):
        return SamplingParams(max_tokens=max_tokens, temperature=0.0)

    def guarded(max_tokens: int):
        return [item.sampling_params(max_tokens=max_tokens) for item in prepared]

    def required(max_tokens: int):
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            structured_outputs=StructuredOutputsParams(json=schema),
        )

    kinds = {"plain": plain, "guardrail": guarded, "vllm-required": required}
    measurements = measure(backend.llm, prompts, kinds, args.max_tokens, args.repeats)
    backend.flush_audit()

    print(machine_description())
    print(
        f"model: {model_dir.name}, dtype {args.dtype}, eager {args.eager}, "
        f"batch {args.batch}, max_tokens {args.max_tokens}, "
        f"median of {args.repeats} runs"
    )
    print(f"{'kind':<15}{'decoded tokens':>16}{'decode s':>10}{'tokens/s':>10}")
    for item in measurements.values():
        print(
            f"{item.kind:<15}{item.decode_tokens:>16}{item.decode_seconds:>10.2f}"
            f"{item.tokens_per_second:>10.1f}"
        )
    base = measurements["plain"].tokens_per_second
    guard_rate = measurements["guardrail"].tokens_per_second
    required_rate = measurements["vllm-required"].tokens_per_second
    print(f"guardrail / plain: {guard_rate / base:.2f}")
    print(f"vllm-required / plain: {required_rate / base:.2f}")
    print(f"guardrail / vllm-required: {guard_rate / required_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
