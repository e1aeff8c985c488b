"""Compile allowed actions into llguidance matchers, with a cache.

llguidance builds a matcher for 20 tools in 13-30 ms and has no cache of its
own, while the same allowed set repeats across the steps of many sessions.
Validated grammars are kept per (policy sha256, allowed-set digest,
tokenizer fingerprint) in a bounded LRU; a matcher is then cheap to create.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import TYPE_CHECKING, Any

import llguidance

from guardrail.errors import GrammarError, PolicyError, RequestError
from guardrail.grammar.formats import ToolCallFormat

if TYPE_CHECKING:
    from guardrail.policy.evaluate import AllowedActions
    from guardrail.policy.model import Policy
    from guardrail.request import ChatRequest

__all__ = ["CompiledGrammar", "GrammarCompiler", "check_tool_schemas"]


@dataclass(frozen=True)
class CompiledGrammar:
    key: tuple[str, str, str]
    text: str


class GrammarCompiler:
    """Builds matchers for one tokenizer and one tool-call format.

    ``vocab_size`` is the width of the model's logits, which may exceed the
    tokenizer's vocabulary (padded embeddings); tokens past the tokenizer's
    end are never allowed.
    """

    def __init__(
        self,
        hf_tokenizer: Any,
        tool_format: ToolCallFormat,
        *,
        vocab_size: int | None = None,
        cache_size: int = 256,
    ) -> None:
        import llguidance.hf

        self.format = tool_format
        self.vocab_size = vocab_size or len(hf_tokenizer)
        self.tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=self.vocab_size
        )
        self.eos_token_id = int(self.tokenizer.eos_token)
        self.special_markers = _special_markers(
            hf_tokenizer, self.tokenizer, tool_format.markers
        )
        self.fingerprint = _fingerprint(hf_tokenizer, self.vocab_size)
        self._cache: OrderedDict[tuple[str, str, str], CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = Lock()
        self.hits = 0
        self.misses = 0

    def compile(self, actions: AllowedActions, policy_sha256: str) -> CompiledGrammar:
        """Return the validated grammar for ``actions``, from cache if present."""
        key = (policy_sha256, actions.cache_key(), self.fingerprint)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return cached

        text = self.format.build_grammar(actions, self.special_markers)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            text, self.tokenizer
        )
        if is_error:
            # llguidance's message can quote the whole grammar, which contains
            # other tools' schemas and the policy's constraints. Callers may
            # see this message, so only its first line is kept.
            reason = messages[0].splitlines()[0][:300]
            raise GrammarError(
                f"llguidance rejected the grammar built for tools "
                f"{list(actions.tool_names)}: {reason}"
            )
        compiled = CompiledGrammar(key=key, text=text)

        with self._lock:
            self.misses += 1
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def new_matcher(self, grammar: CompiledGrammar) -> llguidance.LLMatcher:
        """Create a fresh matcher; each sequence needs its own."""
        matcher = llguidance.LLMatcher(self.tokenizer, grammar.text, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"llguidance matcher failed: {matcher.get_error()}")
        return matcher


def check_tool_schemas(
    request: ChatRequest, actions: AllowedActions, policy: Policy
) -> None:
    """Make sure the grammar engine can enforce every allowed tool's schema.

    A keyword llguidance cannot enforce in the request's own schema is the
    caller's error (:class:`RequestError` at the tool's JSON path); one that
    only fails after the policy narrowed it is a :class:`PolicyError`.
    """
    for index, tool in enumerate(request.tools):
        allowed = actions.tool(tool.function.name)
        if allowed is None:
            continue

        own = tool.function.parameters or {"type": "object"}
        problem = _schema_problem(own)
        if problem:
            raise RequestError(
                f"the grammar engine cannot enforce this schema: {problem}; "
                "remove or rewrite the keyword",
                path=f"$.tools[{index}].function.parameters",
            )

        problem = _schema_problem(allowed.parameters)
        if problem:
            raise PolicyError(
                f"constraints on tool {tool.function.name!r} produce a schema "
                f"the grammar engine cannot enforce: {problem}",
                source=policy.source,
                line=policy.line_of("tools", tool.function.name, "arguments"),
                rule=tool.function.name,
            )


def _schema_problem(schema: dict[str, Any]) -> str:
    return _cached_schema_problem(json.dumps(schema, sort_keys=True))


# The same tool schemas arrive with every step of every session; validating
# one costs about a millisecond, so results are kept per canonical JSON text.
@functools.lru_cache(maxsize=4096)
def _cached_schema_problem(schema_json: str) -> str:
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error else ""


def _special_markers(
    hf_tokenizer: Any, tokenizer: llguidance.LLTokenizer, markers: tuple[str, ...]
) -> frozenset[str]:
    """Return the markers that the tokenizer encodes as one special token."""
    special: set[str] = set()
    for marker in markers:
        ids = hf_tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.is_special_token(ids[0]):
            special.add(marker)
    return frozenset(special)


def _fingerprint(hf_tokenizer: Any, vocab_size: int) -> str:
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    source = (
        backend.to_str()
        if backend is not None
        else json.dumps(hf_tokenizer.get_vocab(), sort_keys=True)
    )
    digest = hashlib.sha256(f"{vocab_size}\n{source}".encode()).hexdigest()
    return digest[:16]
