"""Decode and check a chat-completions body before guardrail reads it.

Everything here is the caller's mistake and becomes HTTP 4xx with the JSON
path of the value and what to send instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from guardrail.proxy.engine import GenerationOptions
from guardrail.proxy.errors import ProxyError

__all__ = ["RequestOptions", "decode_body", "read_options"]


@dataclass(frozen=True)
class RequestOptions:
    stream: bool
    include_usage: bool
    model: str | None
    generation: GenerationOptions


def decode_body(raw: bytes, *, limit: int) -> dict[str, Any]:
    """Return the JSON object in ``raw`` or raise :class:`ProxyError`."""
    if len(raw) > limit:
        raise ProxyError(
            413,
            f"request body of {len(raw)} bytes exceeds the proxy's limit of "
            f"{limit} bytes (max_body_bytes); send fewer or shorter messages",
            code="body_too_large",
        )
    if not raw.strip():
        raise ProxyError(
            400,
            "empty request body: send a JSON object with 'messages'",
            code="invalid_json",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProxyError(
            400,
            f"request body is not valid UTF-8 (invalid byte 0x{raw[err.start]:02x} "
            f"at offset {err.start}); encode the JSON body as UTF-8",
            code="invalid_encoding",
        ) from err
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ProxyError(
            400,
            f"request body is not valid JSON: {err.msg} at line {err.lineno} "
            f"column {err.colno}",
            code="invalid_json",
        ) from err
    except ValueError as err:
        raise ProxyError(400, str(err), code="invalid_json") from err
    except RecursionError as err:
        raise _too_deep() from err

    if not isinstance(body, dict):
        raise ProxyError(
            400,
            f"request body must be a JSON object, got {_json_type(body)}: send "
            "a chat completions body with 'messages'",
            code="invalid_request",
        )

    try:
        path = _find_surrogate(body, "$")
    except RecursionError as err:
        raise _too_deep() from err
    if path is not None:
        raise ProxyError(
            400,
            f"{path}: the string contains an unpaired UTF-16 surrogate escape "
            "(such as \\ud800), which is not Unicode text; send valid UTF-8",
            code="invalid_encoding",
            param=path,
        )
    return body


def read_options(
    body: dict[str, Any], *, default_max_tokens: int, max_tokens_limit: int
) -> RequestOptions:
    """Read the sampling and streaming fields; reject values out of range."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream", stream, "a boolean")

    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _invalid("stream_options", stream_options, "an object")
        include_usage = stream_options.get("include_usage", False) is True

    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ProxyError(
            400,
            f"$.n: {n!r} is not supported; the proxy returns one choice, so "
            "send n=1 or leave it out",
            code="unsupported_parameter",
            param="n",
        )

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("model", model, "a string")

    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not _is_int(max_tokens) or not 1 <= max_tokens <= max_tokens_limit:
        raise _invalid(name, max_tokens, f"an integer from 1 to {max_tokens_limit}")

    generation = GenerationOptions(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        seed=_integer(body, "seed"),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0),
    )
    return RequestOptions(
        stream=stream, include_usage=include_usage, model=model, generation=generation
    )


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or not math.isfinite(value) or not low <= value <= high:
        raise _invalid(name, value, f"a number from {low} to {high}")
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _invalid(name, value, "an integer")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(name: str, value: Any, expected: str) -> ProxyError:
    rendered = json.dumps(value, ensure_ascii=False)[:80]
    return ProxyError(
        400,
        f"$.{name}: invalid value {rendered}; expected {expected}",
        code="invalid_value",
        param=name,
    )


def _too_deep() -> ProxyError:
    return ProxyError(
        400,
        "request body is nested too deeply to decode; flatten the JSON",
        code="invalid_json",
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(
        f"request body is not valid JSON: {name} is not a JSON number; send a "
        "finite number or null"
    )


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _find_surrogate(value: Any, path: str) -> str | None:
    """Return the JSON path of the first string holding a lone surrogate."""
    if isinstance(value, str):
        return path if _has_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _has_surrogate(key):
                return f"{path}.{key.encode('utf-8', 'backslashreplace').decode()}"
            found = _find_surrogate(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
