"""HTTP errors of the proxy, rendered as OpenAI-style error bodies.

Clients built for the OpenAI API read ``error.message``, ``error.type``,
``error.param`` and ``error.code``, so every error the proxy returns uses
that shape. The caller's mistakes are 4xx (``invalid_request_error``);
upstream failures are 502 or 504 and carry the upstream's own message.
"""

from __future__ import annotations

from typing import Any

from guardrail.errors import GuardrailError, InputError, PolicyError, RequestError

__all__ = ["ProxyError", "error_body", "from_guardrail_error"]


class ProxyError(Exception):
    """An error that ends a request with ``status`` and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or (
            "invalid_request_error" if status < 500 else "upstream_error"
        )
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, code=self.code, param=self.param)


def error_body(
    message: str, type: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """Return ``{"error": {...}}`` in the OpenAI API's error layout."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_guardrail_error(err: GuardrailError) -> ProxyError:
    """Map a guardrail exception to HTTP: input errors 400, the rest 500."""
    if isinstance(err, RequestError):
        return ProxyError(400, str(err), code="invalid_request", param=err.path)
    if isinstance(err, PolicyError):
        return ProxyError(
            400,
            f"the bound policy does not fit this request: {err}",
            code="policy_mismatch",
        )
    if isinstance(err, InputError):
        return ProxyError(400, str(err), code="invalid_request")
    return ProxyError(500, str(err), type="server_error", code="internal_error")
