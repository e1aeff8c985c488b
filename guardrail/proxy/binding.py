"""Bind each request to the policy that governs it, or reject it.

Three selectors, strongest first: the API key, the binding header, the
``model`` field. An API key or model that no binding lists selects nothing,
because clients always send some key and some model. A binding header with
an unknown value is an error, because the caller requested a policy that
does not exist. When two selectors name different policies the request is
rejected instead of picking one, so a header cannot move a key's traffic to
a weaker policy. A request that no selector binds is rejected: nothing is
ever served unguarded.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from guardrail.proxy.config import Binding
from guardrail.proxy.errors import ProxyError

__all__ = ["BindingTable", "BoundPolicy"]

Selector = Literal["api_key", "header", "model"]


@dataclass(frozen=True)
class BoundPolicy:
    policy: str
    selector: Selector


class BindingTable:
    """Lookup tables built from the configured bindings.

    With no binding configured, each policy is bound to the model name equal
    to its policy name (``model: support-agent``). That suits a single team.
    A deployment with several teams should list bindings explicitly.
    """

    def __init__(
        self, bindings: list[Binding], header: str, policy_names: list[str]
    ) -> None:
        self.header = header
        self.by_default = not bindings
        self._api_keys: list[tuple[str, str]] = []
        self._headers: dict[str, str] = {}
        self._models: dict[str, str] = {}

        if self.by_default:
            self._models = {name: name for name in policy_names}
            return

        for binding in bindings:
            for key in binding.api_keys:
                self._api_keys.append((key, binding.policy))
            for value in binding.header_values:
                self._headers[value] = binding.policy
            for model in binding.models:
                self._models[model] = binding.policy

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    @property
    def policies(self) -> set[str]:
        named = {policy for _, policy in self._api_keys}
        return named | set(self._headers.values()) | set(self._models.values())

    def resolve(
        self, api_key: str | None, header_value: str | None, model: str | None
    ) -> BoundPolicy:
        """Return the bound policy or raise :class:`ProxyError` (403 or 400)."""
        found: list[BoundPolicy] = []

        if api_key:
            policy = self._match_api_key(api_key)
            if policy is not None:
                found.append(BoundPolicy(policy, "api_key"))

        if header_value is not None:
            policy = self._headers.get(header_value)
            if policy is None:
                known = ", ".join(sorted(self._headers)) or "none configured"
                raise ProxyError(
                    400,
                    f"header {self.header}: {header_value!r} selects no policy; "
                    f"known values: {known}",
                    code="unknown_policy_binding",
                    param=self.header,
                )
            found.append(BoundPolicy(policy, "header"))

        if model is not None and model in self._models:
            found.append(BoundPolicy(self._models[model], "model"))

        if not found:
            raise ProxyError(
                403,
                "no guardrail policy is bound to this request, so it is not "
                "served: send an API key listed in the proxy's bindings, the "
                f"header {self.header}, or one of these model names: "
                f"{', '.join(self.model_names) or 'none'}",
                type="permission_error",
                code="unbound_request",
            )

        first = found[0]
        for other in found[1:]:
            if other.policy != first.policy:
                raise ProxyError(
                    403,
                    f"conflicting policy bindings: the {first.selector} selects "
                    f"{first.policy!r} but the {other.selector} selects "
                    f"{other.policy!r}; send selectors that agree",
                    type="permission_error",
                    code="conflicting_binding",
                )
        return first

    def _match_api_key(self, api_key: str) -> str | None:
        # Compare in constant time so response timing does not leak key bytes.
        match: str | None = None
        for key, policy in self._api_keys:
            if hmac.compare_digest(key.encode(), api_key.encode()):
                match = policy
        return match
