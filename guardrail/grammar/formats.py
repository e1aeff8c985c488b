"""The seam between guardrail and a model family's tool-call format.

A format defines three things: how to show tools and earlier calls in the
prompt, the grammar that lets only allowed calls through in its own layout,
and how to read calls back out of generated text. Hermes/Qwen
(``<tool_call>{...}</tool_call>``) is implemented in :mod:`.hermes`; Llama 3
JSON and Mistral ``[TOOL_CALLS]`` would each be one more module behind this
interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from guardrail.policy.evaluate import AllowedActions
    from guardrail.request import ChatRequest

__all__ = ["ParsedCall", "ParsedOutput", "ToolCallFormat", "get_format"]


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedOutput:
    """Generated text split into free text and tool calls.

    ``error`` is set when the text contains the start of a call that does not
    parse; such output must never be passed on as a call.
    """

    content: str
    calls: tuple[ParsedCall, ...]
    error: str | None = None


class ToolCallFormat(Protocol):
    name: str
    markers: tuple[str, ...]
    """Literal texts that delimit calls, such as ``<tool_call>``."""

    def render_prompt(self, tokenizer: Any, request: ChatRequest) -> str:
        """Return the prompt text, tools included, ready for generation."""
        ...

    def build_grammar(
        self, actions: AllowedActions, special_markers: frozenset[str] = ...
    ) -> str:
        """Return an llguidance grammar that admits only the allowed calls.

        ``special_markers`` are the markers that the tokenizer encodes as one
        special token each.
        """
        ...

    def parse_output(self, text: str) -> ParsedOutput:
        """Split generated text into content and calls."""
        ...


def get_format(name: str) -> ToolCallFormat:
    """Return the format registered under ``name`` (``hermes``)."""
    from guardrail.grammar.hermes import HermesFormat

    formats: dict[str, ToolCallFormat] = {"hermes": HermesFormat()}
    try:
        return formats[name]
    except KeyError:
        raise ValueError(
            f"unknown tool-call format {name!r}; available: {', '.join(formats)}"
        ) from None
