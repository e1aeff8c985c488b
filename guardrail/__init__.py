"""guardrail: policy-derived token masks for LLM tool calls, with an audit.

The public API is re-exported here; modules whose names start with an
underscore, and everything not listed in ``__all__``, may change without
notice. Heavy libraries (torch, transformers, vLLM) load only when a backend
is used.
"""

from __future__ import annotations

from guardrail.audit.log import AuditSink, RequestAudit
from guardrail.errors import (
    AuditError,
    GrammarError,
    GuardrailError,
    InputError,
    InternalError,
    ModelError,
    PolicyError,
    RequestError,
)
from guardrail.guard import Guard, GuardedResult, PreparedRequest
from guardrail.policy.evaluate import AllowedActions, AllowedTool, evaluate_policy
from guardrail.policy.loader import load_policy, load_policy_text
from guardrail.policy.model import Policy
from guardrail.request import ChatRequest, parse_chat_request
from guardrail.session import Session, session_from_request
from guardrail.spec import GuardSpec

__all__ = [
    "AllowedActions",
    "AllowedTool",
    "AuditError",
    "AuditSink",
    "ChatRequest",
    "GrammarError",
    "Guard",
    "GuardSpec",
    "GuardedResult",
    "GuardrailError",
    "InputError",
    "InternalError",
    "ModelError",
    "Policy",
    "PolicyError",
    "PreparedRequest",
    "RequestAudit",
    "RequestError",
    "Session",
    "evaluate_policy",
    "load_policy",
    "load_policy_text",
    "parse_chat_request",
    "session_from_request",
]
