"""A multi-session audit log written by the real model, shared by the tests.

Four sessions on two policies, generated once per test session with the
transformers backend (about 30 s on a 2-core CPU):

- ``s-delete``: the customer requests the deletion of their account; the policy
  denies ``delete_customer``, so the model's reach for it is blocked mass;
- ``s-inject``: a tool result carries an injected order to move 2000 euros;
  the policy caps ``amount`` at 500 and marks ``get_balance`` untrusted;
- ``s-refund``: two agent steps, an order lookup then an allowed refund;
- ``s-shadow``: the delete request again, in shadow mode.

The alert threshold is lowered to 0.05 so the small model's reach for the
denied tool raises real alerts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from baits import (
    ALERT_THRESHOLD,
    BANKING_POLICY,
    SUPPORT_POLICY,
    delete_request,
    inject_request,
    policy_file,
    refund_requests,
)


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="session")
def support_policy_path(audit_dir: Path) -> Path:
    return policy_file(audit_dir, "bait-support", SUPPORT_POLICY)


@pytest.fixture(scope="session")
def banking_policy_path(audit_dir: Path) -> Path:
    return policy_file(audit_dir, "bait-banking", BANKING_POLICY)


@pytest.fixture(scope="session")
def generated_log(
    backend: Any, audit_dir: Path, support_policy_path: Path, banking_policy_path: Path
) -> Path:
    return write_generated_log(
        backend, audit_dir, support_policy_path, banking_policy_path
    )


def write_generated_log(
    backend: Any, directory: Path, support_policy_path: Path, banking_policy_path: Path
) -> Path:
    """Write the four sessions through the real pipeline; return the log path."""
    from guardrail.audit.log import AuditSink
    from guardrail.policy.loader import load_policy
    from guardrail.request import parse_chat_request

    support = backend.guard(
        load_policy(support_policy_path), alert_threshold=ALERT_THRESHOLD
    )
    banking = backend.guard(
        load_policy(banking_policy_path), alert_threshold=ALERT_THRESHOLD
    )
    runs: list[tuple[Any, dict[str, Any], str | None]] = [
        (support, delete_request("s-delete"), None),
        (banking, inject_request(), None),
        *((support, body, None) for body in refund_requests()),
        (support, delete_request("s-shadow"), "shadow"),
    ]

    buffer = io.StringIO()
    sink = AuditSink(buffer)
    for index, (guard, body, mode) in enumerate(runs):
        backend.generate(
            guard,
            parse_chat_request(body),
            sink=sink,
            mode=mode,
            max_tokens=8 if mode == "shadow" else 70,
            request_id=f"req-{index}",
        )
    path = directory / "generated.jsonl"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def generated_events(generated_log: Path) -> list[dict[str, Any]]:
    lines = generated_log.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]
