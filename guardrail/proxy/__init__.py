"""The OpenAI-compatible guardrail proxy.

Clients send ordinary chat-completions requests. The proxy binds each to a
policy and evaluates it. It forwards the resulting guard spec to a vLLM
server with guardrail's logits processor, or runs the model in-process.
Then it validates every returned call again and audits the request. Start
it with ``guardrail serve``.
"""

from __future__ import annotations

from guardrail.proxy.app import ProxyRuntime, build_runtime, create_app
from guardrail.proxy.config import Binding, ConfigError, ProxyConfig, load_config

__all__ = [
    "Binding",
    "ConfigError",
    "ProxyConfig",
    "ProxyRuntime",
    "build_runtime",
    "create_app",
    "load_config",
]
