"""The upstream engine: an OpenAI-compatible vLLM server with the processor.

The proxy sends the per-request :class:`GuardSpec` as
``vllm_xargs={"guardrail": "<json>"}``. A vLLM server without guardrail's
logits processor accepts that field and ignores it, so the proxy checks for
the processor itself:

- at start and every ``probe_interval_s``, a probe request whose spec
  allows nothing (``required`` with no tool): a guarded engine can only
  emit end of sequence, so any generated text means the mask is not applied;
- on every response, each returned call is validated against the policy;
  a forbidden call marks the processor missing until the next probe passes.

While the processor is missing or the upstream is down, requests get 502
and no output is passed on.

``upstream_api: completions`` (the default) renders the prompt here with the
model's chat template and the Hermes tool layout, exactly as the embedded
engine does, and reads raw text back. ``upstream_api: chat`` forwards the
messages and tools to ``/chat/completions`` and reads the upstream's parsed
``tool_calls`` (vLLM with ``--enable-auto-tool-choice --tool-call-parser
hermes``) as well as any ``<tool_call>`` text left in the content.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import structlog

from guardrail.grammar.formats import ParsedCall, ParsedOutput
from guardrail.grammar.hermes import HermesFormat
from guardrail.proxy.engine import EngineResult, GenerationOptions
from guardrail.proxy.errors import ProxyError
from guardrail.spec import GuardSpec

if TYPE_CHECKING:
    from guardrail.guard import Guard, PreparedRequest
    from guardrail.policy.model import Policy

__all__ = ["ProcessorState", "UpstreamEngine"]

log = structlog.get_logger("guardrail.proxy")

ProcessorStatus = Literal["unknown", "loaded", "missing", "unreachable"]

# The probe prompt invites free text that any model would continue. A guarded
# engine, whose spec allows nothing, can only end the sequence at once.
PROBE_PROMPT = "Count from one to ten: one, two,"
PROBE_MAX_TOKENS = 4


@dataclass(frozen=True)
class ProcessorState:
    status: ProcessorStatus = "unknown"
    detail: str = "not checked yet"
    checked_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "processor_loaded": self.status == "loaded",
            "status": self.status,
            "detail": self.detail,
            "checked_at": self.checked_at or None,
        }


class UpstreamEngine:
    """Forwards guarded requests to ``base_url`` and watches its processor."""

    name = "vllm"

    def __init__(
        self,
        base_url: str,
        hf_tokenizer: Any,
        *,
        api: Literal["completions", "chat"] = "completions",
        model: str | None = None,
        timeout_s: float = 120.0,
        probe_interval_s: float = 30.0,
        alert_threshold: float = 0.5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.hf_tokenizer = hf_tokenizer
        self.api = api
        self.model = model
        self.probe_interval_s = probe_interval_s
        self.alert_threshold = alert_threshold
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=5.0)
        )
        self.state = ProcessorState()
        self.format = HermesFormat()
        self._probe_lock = asyncio.Lock()

    def new_guard(self, policy: Policy) -> Guard:
        from guardrail.guard import Guard

        return Guard(
            policy,
            self.hf_tokenizer,
            tool_format=self.format,
            alert_threshold=self.alert_threshold,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def ensure_ready(self) -> None:
        """Probe when the last result is stale; raise 502 unless loaded."""
        if not self._fresh():
            async with self._probe_lock:
                if not self._fresh():
                    await self.probe()

        if self.state.status == "loaded":
            return
        code = (
            "upstream_unreachable"
            if self.state.status == "unreachable"
            else "upstream_processor_missing"
        )
        raise ProxyError(502, self.state.detail, code=code)

    def _fresh(self) -> bool:
        # A missing processor is probed again only after the interval, so a
        # server that broke its spec is not trusted again at once. A down
        # upstream is probed on every request, so serving resumes quickly.
        age = time.monotonic() - self.state.checked_at
        settled = self.state.status in {"loaded", "missing"}
        return settled and age < self.probe_interval_s

    async def probe(self) -> ProcessorState:
        """Send the allow-nothing probe and record whether it was obeyed."""
        spec = GuardSpec(
            request_id=f"probe-{uuid.uuid4().hex[:16]}",
            policy="guardrail-probe",
            policy_sha256="0" * 64,
            tool_choice="required",
            tools=[],
        )
        try:
            if self.model is None:
                self.model = await self._discover_model()
            if self.api == "completions":
                body: dict[str, Any] = {"prompt": PROBE_PROMPT}
            else:
                body = {"messages": [{"role": "user", "content": PROBE_PROMPT}]}
            body.update(
                model=self.model,
                max_tokens=PROBE_MAX_TOKENS,
                temperature=0.0,
                vllm_xargs=spec.to_vllm_xargs(),
            )
            data = await self._post(body)
            result = self._read_result(data)
        except ProxyError as err:
            status: ProcessorStatus = (
                "unreachable" if err.code in _UNREACHABLE_CODES else "missing"
            )
            self._set_state(status, err.message)
            return self.state

        output = result.output
        if output.content or output.calls or output.error:
            self._set_state(
                "missing",
                f"upstream {self.base_url} does not apply guardrail's logits "
                f"processor: a probe that allows nothing produced "
                f"{output.content[:40]!r}; start vLLM with "
                "--logits-processors (see integrations/vllm-serve.md)",
            )
        else:
            self._set_state("loaded", "the probe that allows nothing came back empty")
        return self.state

    def mark_missing(self, reason: str) -> None:
        """Record that a response broke its spec; serving stops until a probe."""
        self._set_state(
            "missing",
            f"upstream {self.base_url} returned output its guard spec forbids "
            f"({reason}); it is not applying guardrail's logits processor",
        )

    def _set_state(self, status: ProcessorStatus, detail: str) -> None:
        previous = self.state.status
        self.state = ProcessorState(status, detail, time.monotonic())
        if status != previous:
            event = "upstream_ready" if status == "loaded" else "upstream_not_ready"
            logger = log.info if status == "loaded" else log.error
            logger(event, upstream=self.base_url, status=status, detail=detail)

    async def generate(
        self,
        guard: Guard,
        prepared: PreparedRequest,
        spec: GuardSpec,
        options: GenerationOptions,
    ) -> EngineResult:
        del guard
        await self.ensure_ready()

        if self.api == "completions":
            body: dict[str, Any] = {
                "prompt": prepared.prompt,
                # The prompt already contains the chat template's special tokens.
                "add_special_tokens": False,
            }
        else:
            body = _chat_body(prepared)
        body.update(
            model=self.model,
            vllm_xargs=spec.to_vllm_xargs(),
            **options.sampling_fields(),
        )

        try:
            data = await self._post(body)
        except ProxyError as err:
            if err.code in _UNREACHABLE_CODES:
                self._set_state("unreachable", err.message)
            raise
        return self._read_result(data)

    async def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        data = await self._request("GET", url, None)
        models = data.get("data") if isinstance(data, dict) else None
        if not models or not isinstance(models[0], dict) or "id" not in models[0]:
            raise ProxyError(
                502,
                f"upstream {url} lists no model; set upstream_model in the "
                "proxy configuration",
                code="upstream_invalid_response",
            )
        return str(models[0]["id"])

    async def _post(self, body: dict[str, Any]) -> Any:
        path = "/completions" if self.api == "completions" else "/chat/completions"
        return await self._request("POST", self.base_url + path, body)

    async def _request(self, method: str, url: str, body: Any) -> Any:
        try:
            response = await self.client.request(method, url, json=body)
        except httpx.TimeoutException as err:
            raise ProxyError(
                504,
                f"upstream {url} timed out ({type(err).__name__}); retry, or "
                "raise upstream_timeout_s if generations are long",
                code="upstream_timeout",
            ) from err
        except httpx.TransportError as err:
            raise ProxyError(
                502,
                f"upstream {url} is unreachable: {err or type(err).__name__}",
                code="upstream_unreachable",
            ) from err

        if response.status_code >= 400:
            raise ProxyError(
                502,
                f"upstream {url} returned HTTP {response.status_code}: "
                f"{_upstream_message(response)}",
                code="upstream_error",
            )
        try:
            return response.json()
        except ValueError as err:
            raise ProxyError(
                502,
                f"upstream {url} returned a body that is not JSON: "
                f"{response.text[:200]!r}",
                code="upstream_invalid_response",
            ) from err

    def _read_result(self, data: Any) -> EngineResult:
        try:
            choice = data["choices"][0]
            finish_reason = choice.get("finish_reason")
            if self.api == "completions":
                output = self.format.parse_output(str(choice.get("text") or ""))
                call_ids: tuple[str, ...] = ()
            else:
                output, call_ids = self._read_chat_message(choice["message"])
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise ProxyError(
                502,
                f"upstream {self.base_url} returned a response without "
                f"choices[0] in the OpenAI layout ({type(err).__name__}: {err})",
                code="upstream_invalid_response",
            ) from err

        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        return EngineResult(
            output=output,
            stopped=finish_reason in {"stop", "tool_calls"},
            usage=usage,
            call_ids=call_ids,
        )

    def _read_chat_message(
        self, message: dict[str, Any]
    ) -> tuple[ParsedOutput, tuple[str, ...]]:
        parsed = self.format.parse_output(str(message.get("content") or ""))
        calls: list[ParsedCall] = []
        ids: list[str] = []
        error = parsed.error
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call["function"]
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except json.JSONDecodeError as err:
                arguments = None
                error = error or f"tool_calls[{index}] arguments are not JSON: {err}"
            if not isinstance(arguments, dict):
                error = error or f"tool_calls[{index}] arguments are not an object"
                continue
            calls.append(ParsedCall(name=str(function["name"]), arguments=arguments))
            ids.append(str(call.get("id") or ""))

        # Calls the upstream parsed come first, then any left in the text.
        all_calls = (*calls, *parsed.calls)
        ids.extend("" for _ in parsed.calls)
        output = ParsedOutput(content=parsed.content, calls=all_calls, error=error)
        return output, tuple(ids)


_UNREACHABLE_CODES = {"upstream_unreachable", "upstream_timeout"}


def _chat_body(prepared: PreparedRequest) -> dict[str, Any]:
    request = prepared.request
    body: dict[str, Any] = {
        "messages": [m.model_dump(exclude_none=True) for m in request.messages],
    }
    if request.tools:
        body["tools"] = [t.model_dump(exclude_none=True) for t in request.tools]
        # The spec enforces required and named choices token by token; vLLM's
        # own structured output for them would fight the guardrail grammar.
        allowed = prepared.actions.mode != "none" and prepared.actions.tools
        body["tool_choice"] = "auto" if allowed else "none"
    return body


def _upstream_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "message" in data:
            return str(data["message"])
        if "detail" in data:
            return str(data["detail"])
    return json.dumps(data)[:500]
