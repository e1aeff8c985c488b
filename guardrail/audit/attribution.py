"""Attribute the blocked probability mass of a decoding step to its causes.

The masking core keeps, per step, the blocked mass and the few most likely
blocked tokens (:class:`~guardrail.processors.core.StepRecord`). Together with
the text generated so far, that is enough to say what the model was trying
to write when the mask stopped it:

- at a tool-name step (the Hermes layout has just written ``{"name": "``),
  each blocked candidate extends the name. It may spell a tool of the
  request that the policy denies at this step (``denied_tool``, with the
  rule that denied it). It may spell a name that is no tool of the request
  (``invented_tool``, with the invented prefix decoded). A prefix of an
  allowed name, blocked only because the grammar engine accepts other
  tokens for it, is ``tokenization``. Anything else is text that cannot be
  a name (``malformed``);
- at an argument step, the candidate's value is checked against the
  argument's schema and the first constraint it breaks is named
  (``argument``: for example ``amount`` above ``maximum: 100``), or the key
  it starts is no argument of the tool (``unknown_argument``);
- outside a call, a candidate that would open ``<tool_call>`` is a
  ``call_start`` and anything else is ``text``.

Mass outside the kept candidates is reported as ``unattributed``, so the
attributed parts and the rest add up to the step's blocked mass.

Cost: nothing runs on steps below ``min_mass``. Above it, the new tokens are
decoded to bytes, the text since the last ``<tool_call>`` is scanned once
(a call is a few hundred bytes) and each kept candidate is checked in
microseconds, so a step costs tens of microseconds next to a forward pass
of tens of milliseconds (see ``benchmarks/bench_attribution.py``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardrail.policy.evaluate import AllowedActions
    from guardrail.policy.model import Policy
    from guardrail.processors.core import StepRecord

__all__ = [
    "AttributionItem",
    "StepAttribution",
    "StepAttributor",
    "ToolCatalog",
    "policy_constraints",
]

CALL_START = b"<tool_call>"
CALL_END = "</tool_call>"
NAME_OPENING = '{"name": "'
ARGUMENTS_OPENING = '"arguments": '
# The text after a complete tool name in the Hermes layout.
CALL_LAYOUT = ', "arguments": {'
# The text after a complete key in the compact JSON layout.
KEY_LAYOUT = '": '

# Characters an invented tool name may plausibly contain. Anything else
# (quotes, braces, newlines) means the model was not writing a name at all.
_NAME_CHARACTER = re.compile(r"[A-Za-z0-9_.:\- ]")

# Kinds whose mass raises an alert: the model reached for a tool it may not
# call at this step, or for a tool that does not exist.
TOOL_KINDS = frozenset({"denied_tool", "invented_tool"})


@dataclass(frozen=True)
class ToolCatalog:
    """The tools of one request, allowed or denied by the policy at this step.

    ``allowed`` maps each allowed tool to its narrowed argument schema.
    ``denied`` maps each tool of the request that may not be called to the
    rule that blocked it (id with file:line, or ``None``) and the reason.
    ``policy_arguments`` maps tool, argument and keyword to the policy rule
    that set the constraint, to tell a policy limit from one in the tool's
    own schema.
    """

    allowed: Mapping[str, Mapping[str, Any]]
    denied: Mapping[str, tuple[str | None, str]]
    policy_arguments: Mapping[str, Mapping[str, Mapping[str, str]]] = field(
        default_factory=dict
    )

    @classmethod
    def from_actions(
        cls, actions: AllowedActions, policy: Policy | None = None
    ) -> ToolCatalog:
        allowed = {tool.name: tool.parameters for tool in actions.tools}
        return cls.from_decisions(
            allowed,
            actions.decisions,
            mode=actions.mode,
            policy_arguments={
                name: policy_constraints(policy, name) for name in allowed
            },
        )

    @classmethod
    def from_decisions(
        cls,
        allowed: Mapping[str, Mapping[str, Any]],
        decisions: Iterable[Any],
        *,
        mode: str,
        policy_arguments: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
        request_tools: Iterable[str] = (),
    ) -> ToolCatalog:
        """Build the catalog from plain data, without a policy object.

        ``decisions`` are objects with ``tool``, ``allowed``, ``reason`` and,
        optionally, ``rule``, ``source`` and ``line`` (the policy's
        :class:`~guardrail.policy.evaluate.Decision` or the guard spec's
        copy of it). A tool of ``request_tools`` that is neither allowed nor
        decided is denied without a rule.
        """
        denied: dict[str, tuple[str | None, str]] = {}
        for decision in decisions:
            if decision.tool in allowed:
                continue
            # A tool the policy allows can still be out of reach at this step,
            # for instance when tool_choice is "none".
            reason = decision.reason
            if decision.allowed:
                reason = f"tool_choice is {mode!r}"
            denied[decision.tool] = (_rule_name(decision), reason)
        for name in request_tools:
            if name not in allowed and name not in denied:
                denied[name] = (None, "not allowed at this step")
        return cls(
            allowed=dict(allowed),
            denied=denied,
            policy_arguments=dict(policy_arguments or {}),
        )


@dataclass(frozen=True)
class AttributionItem:
    """A share of one step's blocked mass and what it was aimed at.

    ``tool`` is the denied tool or the tool whose argument was blocked.
    ``name`` is the invented name prefix. ``argument`` is the argument path,
    and ``constraint``, ``limit``, ``source`` and ``rule`` describe the
    keyword that blocked it. For a denied tool, ``rule`` and ``reason`` are the policy's
    decision. ``example`` is the likeliest blocked text of this item.
    """

    kind: str
    mass: float
    tool: str | None = None
    name: str | None = None
    argument: str | None = None
    constraint: str | None = None
    limit: Any = None
    source: str | None = None
    rule: str | None = None
    reason: str | None = None
    example: str | None = None

    def key(self) -> tuple[Any, ...]:
        limit = self.limit if isinstance(self.limit, str | int | float) else None
        return (
            self.kind,
            self.tool,
            self.name,
            self.argument,
            self.constraint,
            limit,
            self.source,
            self.rule,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "mass": round(self.mass, 6)}
        keys = ("tool", "name", "argument", "constraint", "source", "rule", "reason")
        for key in keys:
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.limit is not None:
            data["limit"] = self.limit
        if self.example is not None:
            data["example"] = self.example
        return data


@dataclass(frozen=True)
class StepAttribution:
    """The attribution of one step: its context and the mass per cause.

    ``context`` is ``tool_name``, ``arguments``, ``call`` (inside a call but
    between its parts) or ``text``. ``prefix`` is the tool name written so
    far at a tool-name step. ``unattributed`` is the blocked mass of tokens
    outside the kept candidates.
    """

    context: str
    items: tuple[AttributionItem, ...]
    unattributed: float
    tool: str | None = None
    prefix: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"context": self.context}
        if self.tool is not None:
            data["tool"] = self.tool
        if self.prefix is not None:
            data["prefix"] = self.prefix
        data["items"] = [item.to_json() for item in self.items]
        data["unattributed"] = round(self.unattributed, 6)
        return data


class StepAttributor:
    """Attributes the blocked mass of one sequence's steps.

    ``decode_bytes`` turns token ids into bytes (llguidance's
    ``LLTokenizer.decode_bytes``). The generated bytes are decoded
    incrementally, only at steps that are attributed, so the cost of a
    sequence stays linear in its length.
    """

    def __init__(
        self,
        catalog: ToolCatalog,
        decode_bytes: Callable[[list[int]], bytes],
        *,
        min_mass: float = 0.01,
    ) -> None:
        self.catalog = catalog
        self.decode_bytes = decode_bytes
        self.min_mass = min_mass
        self._generated = bytearray()
        self._decoded_tokens = 0

    def attribute(
        self, record: StepRecord, tokens: Sequence[int]
    ) -> StepAttribution | None:
        """Return the attribution of ``record``, or ``None`` below ``min_mass``.

        ``tokens`` are the tokens sampled before this step
        (``SequenceGuard.tokens``).
        """
        if record.blocked_mass < self.min_mass or not record.top_blocked:
            return None
        if len(tokens) > self._decoded_tokens:
            self._generated += self.decode_bytes(list(tokens[self._decoded_tokens :]))
            self._decoded_tokens = len(tokens)

        position = self._generated.rfind(CALL_START)
        if position < 0:
            tail = bytes(self._generated[-len(CALL_START) :])
            return self._attribute_text(record, tail.decode("utf-8", "replace"))
        call_text = bytes(self._generated[position + len(CALL_START) :]).decode(
            "utf-8", "replace"
        )
        return self._attribute_call(record, call_text)

    def _attribute_text(self, record: StepRecord, tail: str) -> StepAttribution:
        start = CALL_START.decode()
        candidates = []
        for token in record.top_blocked:
            kind = "call_start" if start in tail + token.text else "text"
            candidates.append(
                AttributionItem(kind, token.probability, example=token.text)
            )
        return _merge("text", record, candidates)

    def _attribute_call(self, record: StepRecord, call_text: str) -> StepAttribution:
        if CALL_END in call_text:
            # NOTE: an argument value that contains the end tag text also
            # lands here; such steps are attributed as text.
            tail = call_text[-len(CALL_END) :]
            return self._attribute_text(record, tail)

        body = call_text.lstrip(" \n")
        if not body.startswith(NAME_OPENING):
            return _all_malformed("call", record)
        rest = body[len(NAME_OPENING) :]
        end = rest.find('"')
        if end < 0:
            return self._attribute_name(record, rest)

        tool = rest[:end]
        after_name = rest[end + 1 :]
        opening = ", " + ARGUMENTS_OPENING
        if not after_name.startswith(opening) or tool not in self.catalog.allowed:
            return _all_malformed("call", record, tool=tool)
        return self._attribute_arguments(record, tool, after_name[len(opening) :])

    def _attribute_name(self, record: StepRecord, prefix: str) -> StepAttribution:
        candidates = []
        for token in record.top_blocked:
            candidates.extend(self._classify_name(prefix + token.text, token))
        return _merge("tool_name", record, candidates, prefix=prefix)

    def _classify_name(self, text: str, token: Any) -> list[AttributionItem]:
        """Classify one candidate by the tool name it would spell.

        A candidate that spells a prefix of an allowed name is blocked only
        because the grammar engine accepts one tokenization of a fixed name
        (llguidance 1.7 does so), hence ``tokenization``. A prefix shared by
        several denied tools is split evenly between them.
        """
        mass, example = token.probability, token.text
        closed = '"' in text
        name, _, after = text.partition('"')

        if closed:
            if name in self.catalog.allowed:
                kind = "tokenization" if CALL_LAYOUT.startswith(after) else "malformed"
                return [AttributionItem(kind, mass, tool=name, example=example)]
            if name in self.catalog.denied:
                return [self._denied(name, mass, example)]
            if _looks_like_name(name):
                return [AttributionItem("invented_tool", mass, name=name, example=name)]
            return [AttributionItem("malformed", mass, example=example)]

        if any(tool.startswith(name) for tool in self.catalog.allowed):
            return [AttributionItem("tokenization", mass, example=example)]
        denied = sorted(tool for tool in self.catalog.denied if tool.startswith(name))
        if denied:
            share = mass / len(denied)
            return [self._denied(tool, share, example) for tool in denied]
        if _looks_like_name(name):
            return [AttributionItem("invented_tool", mass, name=name, example=name)]
        return [AttributionItem("malformed", mass, example=example)]

    def _denied(self, tool: str, mass: float, example: str) -> AttributionItem:
        rule, reason = self.catalog.denied.get(tool, (None, ""))
        return AttributionItem(
            "denied_tool",
            mass,
            tool=tool,
            rule=rule,
            reason=reason,
            example=example,
        )

    def _attribute_arguments(
        self, record: StepRecord, tool: str, arguments: str
    ) -> StepAttribution:
        schema = self.catalog.allowed[tool]
        state = scan_partial_json(arguments)
        if state is None:
            # The arguments object is closed: the rest of the call is layout.
            return _all_malformed("call", record, tool=tool)

        candidates = [
            self._classify_argument(tool, schema, state, token)
            for token in record.top_blocked
        ]
        return _merge("arguments", record, candidates, tool=tool)

    def _classify_argument(
        self,
        tool: str,
        schema: Mapping[str, Any],
        state: JsonState,
        token: Any,
    ) -> AttributionItem:
        mass, text = token.probability, token.text
        if state.kind == "key":
            return self._classify_key(tool, schema, state, token)
        if state.kind not in {"value", "after_value"} or not state.path:
            return AttributionItem("argument_syntax", mass, tool=tool, example=text)

        parent = _schema_at(schema, state.path[:-1])
        if state.kind == "after_value":
            keyword, limit = _closing_constraint(parent, state, text)
            if keyword is None:
                return AttributionItem("argument_syntax", mass, tool=tool, example=text)
        else:
            candidate = _read_candidate(state, text)
            target = _schema_at(schema, state.path)
            keyword, limit = _value_constraint(target, candidate)
            if keyword is None and candidate.closed:
                keyword, limit = _closing_constraint(parent, state, candidate.remainder)
        source, rule = self._constraint_source(tool, state.path, keyword)
        return AttributionItem(
            "argument",
            mass,
            tool=tool,
            argument=_format_path(state.path),
            constraint=keyword,
            limit=limit,
            source=source,
            rule=rule,
            example=(state.partial or "") + text,
        )

    def _classify_key(
        self,
        tool: str,
        schema: Mapping[str, Any],
        state: JsonState,
        token: Any,
    ) -> AttributionItem:
        mass, text = token.probability, token.text
        parent = _schema_at(schema, state.path) or {}
        properties = parent.get("properties", {})
        written = (state.partial or "") + text

        if state.partial is None:
            stripped = written.lstrip()
            if stripped.startswith("}"):
                missing = [
                    key for key in parent.get("required", []) if key not in state.keys
                ]
                return AttributionItem(
                    "argument",
                    mass,
                    tool=tool,
                    argument=_format_path([*state.path, *missing[:1]]) or None,
                    constraint="required",
                    limit=missing or None,
                    source="tool_schema",
                    example=text,
                )
            if not stripped.startswith('"'):
                return AttributionItem("argument_syntax", mass, tool=tool, example=text)
            written = stripped[1:]

        key, closed, after = written.partition('"')
        pending = [name for name in properties if name not in state.keys]
        if pending and (
            pending[0] == key and KEY_LAYOUT.startswith(after)
            if closed
            else pending[0].startswith(key)
        ):
            # The next property in schema order, spelled with other tokens
            # than the grammar engine accepts for a fixed key.
            return AttributionItem("tokenization", mass, tool=tool, example=text)

        if closed:
            matches = [key] if key in properties else []
        else:
            matches = [name for name in properties if name.startswith(key)]
        if not matches:
            return AttributionItem(
                "unknown_argument",
                mass,
                tool=tool,
                argument=_format_path([*state.path, key]),
                example=key,
            )
        # llguidance 1.7 writes properties in schema order, each once.
        constraint = "order" if set(matches) & set(pending) else "duplicate"
        return AttributionItem(
            "argument",
            mass,
            tool=tool,
            argument=_format_path([*state.path, key]),
            constraint=constraint,
            source="grammar",
            example=key,
        )

    def _constraint_source(
        self, tool: str, path: Sequence[str | int], keyword: str | None
    ) -> tuple[str | None, str | None]:
        if keyword is None:
            return None, None
        top = path[0] if path else None
        if isinstance(top, str) and len(path) == 1:
            rules = self.catalog.policy_arguments.get(tool, {}).get(top, {})
            if keyword in rules:
                return "policy", rules[keyword]
        return "tool_schema", None


@dataclass
class JsonState:
    """Where a partial JSON object ends.

    ``kind`` is ``key`` (a key is expected or being written), ``value`` (a
    value is being written, of type ``value_type``) or ``after_value``.
    ``path`` leads to the value (or to the object whose key is written).
    ``partial`` is the unfinished key, string content or number text, and
    ``keys`` are the keys already complete in the innermost object.
    """

    kind: str
    path: list[str | int]
    partial: str | None = None
    value_type: str | None = None
    keys: list[str] = field(default_factory=list)


def scan_partial_json(text: str) -> JsonState | None:
    """Scan the start of a JSON object and return where it stops.

    Returns ``None`` when ``text`` is not the start of an object or the
    object is already closed. Linear in ``len(text)``.
    """
    if not text.startswith("{"):
        return None
    # Each frame: [container, key or index, keys seen, expecting]
    frames: list[list[Any]] = [["object", None, [], "key_or_end"]]
    index = 1
    length = len(text)

    while index < length:
        char = text[index]
        frame = frames[-1]
        if char in " \n\r\t":
            index += 1
            continue

        if frame[3] in {"key", "key_or_end"}:
            if char == "}" and frame[3] == "key_or_end":
                frames.pop()
                if not frames:
                    return None
                frames[-1][3] = "after_value"
                index += 1
                continue
            if char != '"':
                return None
            end, content = _read_string(text, index + 1)
            if end < 0:
                return JsonState("key", _path_of(frames), content, keys=frame[2])
            frame[1] = content
            index = end
            frame[3] = "colon"
            continue

        if frame[3] == "colon":
            if char != ":":
                return None
            frame[3] = "value"
            index += 1
            continue

        if frame[3] == "value":
            if char == "{":
                frames.append(["object", None, [], "key_or_end"])
                index += 1
                continue
            if char == "[":
                frames.append(["array", 0, [], "value_or_end"])
                index += 1
                continue
            end, value_type, partial = _read_scalar(text, index)
            if end < 0:
                return JsonState(
                    "value", _path_of(frames), partial, value_type, keys=frame[2]
                )
            _finish_value(frames)
            index = end
            continue

        if frame[3] == "value_or_end":
            if char == "]":
                frames.pop()
                frames[-1][3] = "after_value"
                index += 1
                continue
            frame[3] = "value"
            continue

        if frame[3] == "after_value":
            if char == ",":
                if frame[0] == "object":
                    frame[3] = "key"
                else:
                    frame[1] += 1
                    frame[3] = "value"
                index += 1
                continue
            if char in "}]":
                frames.pop()
                if not frames:
                    return None
                frames[-1][3] = "after_value"
                index += 1
                continue
            return None
        return None

    frame = frames[-1]
    path = _path_of(frames)
    if frame[3] in {"key", "key_or_end"}:
        return JsonState("key", path, None, keys=frame[2])
    if frame[3] in {"value", "value_or_end"}:
        return JsonState("value", path, "", None, keys=frame[2])
    if frame[3] == "after_value":
        return JsonState("after_value", path, None, keys=frame[2])
    return JsonState("colon", path, None, keys=frame[2])


def _finish_value(frames: list[list[Any]]) -> None:
    frame = frames[-1]
    if frame[0] == "object":
        frame[2].append(frame[1])
    frame[3] = "after_value"


def _path_of(frames: list[list[Any]]) -> list[str | int]:
    """Return the path to the value or key being written in the last frame."""
    path: list[str | int] = []
    for frame in frames:
        if frame[3] in {"key", "key_or_end"} and frame is frames[-1]:
            break
        if frame[1] is not None:
            path.append(frame[1])
    return path


def _read_string(text: str, index: int) -> tuple[int, str]:
    """Read string content from ``index``; return (index after the quote, content).

    The index is -1 when the string is not closed yet.
    """
    out: list[str] = []
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text):
                return -1, "".join(out)
            out.append(text[index : index + 2])
            index += 2
            continue
        if char == '"':
            return index + 1, "".join(out)
        out.append(char)
        index += 1
    return -1, "".join(out)


def _read_scalar(text: str, index: int) -> tuple[int, str, str]:
    char = text[index]
    if char == '"':
        end, content = _read_string(text, index + 1)
        return end, "string", content
    start = index
    while index < len(text) and text[index] not in ",}] \n":
        index += 1
    partial = text[start:index]
    value_type = "number" if char in "-0123456789" else "literal"
    if index >= len(text):
        return -1, value_type, partial
    return index, value_type, partial


def _schema_at(
    schema: Mapping[str, Any] | None, path: Sequence[str | int]
) -> Mapping[str, Any] | None:
    current = schema
    for part in path:
        if not isinstance(current, Mapping):
            return None
        if isinstance(part, str):
            current = current.get("properties", {}).get(part)
        else:
            current = current.get("items")
    return current if isinstance(current, Mapping) else None


def _keywords(schema: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """Collect the keywords of ``schema`` and of its ``allOf`` parts."""
    found: dict[str, list[Any]] = {}
    if not isinstance(schema, Mapping):
        return found
    for key, value in schema.items():
        if key == "allOf" and isinstance(value, list):
            for part in value:
                for inner, values in _keywords(part).items():
                    found.setdefault(inner, []).extend(values)
        else:
            found.setdefault(key, []).append(value)
    return found


def _rule_name(decision: Any) -> str | None:
    rule = getattr(decision, "rule", None)
    source = getattr(decision, "source", None)
    line = getattr(decision, "line", None)
    if rule and source and line:
        return f"{rule} ({source}:{line})"
    return rule


def policy_constraints(policy: Policy | None, tool: str) -> dict[str, dict[str, str]]:
    """Map each argument keyword the policy sets on ``tool`` to its rule path.

    Covers ``tools`` entries (by name or glob) and ``rules`` that permit the
    tool by name or glob. A selector naming a group is not expanded here.
    """
    found: dict[str, dict[str, str]] = {}
    if policy is None:
        return found
    sources: list[tuple[str, Any]] = []
    for selector, rule in (getattr(policy, "tools", None) or {}).items():
        if fnmatch.fnmatchcase(tool, selector):
            sources.append((f"tools.{selector}", rule))
    for rule in getattr(policy, "rules", None) or []:
        if getattr(rule, "effect", None) != "permit":
            continue
        if any(fnmatch.fnmatchcase(tool, selector) for selector in rule.tools):
            sources.append((f"rules.{rule.id}", rule))

    for prefix, rule in sources:
        for argument, keywords in (getattr(rule, "arguments", None) or {}).items():
            for keyword in keywords:
                found.setdefault(argument, {}).setdefault(
                    keyword, f"{prefix}.arguments.{argument}.{keyword}"
                )
    return found


@dataclass(frozen=True)
class _Candidate:
    """The value a candidate token would write, as far as it goes.

    ``value`` is the string content (without quotes) or the number or
    literal text; ``remainder`` is the text after the value when the
    candidate closes it.
    """

    value_type: str | None
    value: str
    closed: bool
    remainder: str = ""


def _read_candidate(state: JsonState, text: str) -> _Candidate:
    partial = state.partial or ""
    value_type = state.value_type
    body = text
    if value_type is None:
        body = text.lstrip()
        value_type = _type_of_start(body)
        if value_type == "string":
            body = body[1:]
        elif value_type not in {"number", "literal"}:
            return _Candidate(value_type, body, closed=False)

    written = partial + body
    if value_type == "string":
        end, content = _read_string(written, 0)
        if end < 0:
            return _Candidate("string", written, closed=False)
        return _Candidate("string", content, closed=True, remainder=written[end:])

    scalar = re.match(r"[^,}\] \n]*", written)
    value = scalar.group(0) if scalar else ""
    closed = len(value) < len(written)
    return _Candidate(value_type, value, closed, written[len(value) :])


def _value_constraint(
    schema: Mapping[str, Any] | None, candidate: _Candidate
) -> tuple[str | None, Any]:
    """Return the first keyword of ``schema`` that the candidate value breaks."""
    keywords = _keywords(schema)
    declared = [t for types in keywords.get("type", []) for t in _as_list(types)]
    value_type = candidate.value_type
    if value_type and declared and not _type_fits(value_type, declared, candidate):
        return "type", declared[0] if len(declared) == 1 else declared

    if value_type == "string":
        return _string_constraint(keywords, candidate.value, candidate.closed)
    if value_type == "number":
        return _number_constraint(keywords, candidate.value, candidate.closed, declared)
    return None, None


def _closing_constraint(
    parent: Mapping[str, Any] | None, state: JsonState, remainder: str
) -> tuple[str | None, Any]:
    """Name the keyword that blocks what follows a complete value.

    ``}`` too early breaks ``required``; ``,`` after the last property
    breaks ``additionalProperties``; in an array, ``]`` and ``,`` break
    ``minItems`` and ``maxItems``.
    """
    if not isinstance(parent, Mapping):
        return None, None
    following = remainder.lstrip()[:1]
    last = state.path[-1]
    if isinstance(last, int):
        if following == "]" and "minItems" in parent:
            return "minItems", parent["minItems"]
        if following == "," and "maxItems" in parent:
            return "maxItems", parent["maxItems"]
        return None, None

    written = [*state.keys, last]
    if following == "}":
        missing = [key for key in parent.get("required", []) if key not in written]
        if missing:
            return "required", missing
    if following == ",":
        remaining = [key for key in parent.get("properties", {}) if key not in written]
        if not remaining:
            return "additionalProperties", parent.get("additionalProperties", False)
    return None, None


def _string_constraint(
    keywords: dict[str, list[Any]], value: str, closed: bool
) -> tuple[str | None, Any]:
    for limit in keywords.get("maxLength", []):
        if len(value) > limit:
            return "maxLength", limit
    for options in keywords.get("enum", []):
        if _fails_choices(value, [str(option) for option in options], closed):
            return "enum", options
    for constant in keywords.get("const", []):
        if _fails_choices(value, [str(constant)], closed):
            return "const", constant
    if closed:
        for limit in keywords.get("minLength", []):
            if len(value) < limit:
                return "minLength", limit
        for pattern in keywords.get("pattern", []):
            if _search(pattern, value) is False:
                return "pattern", pattern
        if keywords.get("format"):
            return "format", keywords["format"][0]
        return None, None

    # A prefix cannot be tested against a pattern or format without the
    # grammar engine; they are the keywords left that can block a prefix.
    if keywords.get("pattern"):
        return "pattern", keywords["pattern"][0]
    if keywords.get("format"):
        return "format", keywords["format"][0]
    return None, None


def _number_constraint(
    keywords: dict[str, list[Any]], text: str, closed: bool, declared: list[str]
) -> tuple[str | None, Any]:
    """Check a number or its prefix against the numeric keywords.

    A prefix without a decimal point only grows in magnitude as digits
    follow, so an upper bound it already exceeds (or, when negative, a
    lower bound) is broken. Other bounds wait for the complete number.
    """
    match = re.fullmatch(r"-?\d+(\.\d*)?([eE][-+]?\d*)?", text)
    if match is None:
        return None, None
    try:
        value = float(text.rstrip("eE+-."))
    except ValueError:
        return None, None
    if not math.isfinite(value):
        return None, None
    final = closed or "." in text

    if "integer" in declared and "number" not in declared and "." in text:
        return "type", "integer"
    for limit in keywords.get("maximum", []):
        if value > limit and (final or value > 0):
            return "maximum", limit
    for limit in keywords.get("exclusiveMaximum", []):
        if value >= limit and (final or value > 0):
            return "exclusiveMaximum", limit
    for limit in keywords.get("minimum", []):
        if value < limit and (final or value < 0):
            return "minimum", limit
    for limit in keywords.get("exclusiveMinimum", []):
        if value <= limit and (final or value < 0):
            return "exclusiveMinimum", limit
    if closed:
        for step in keywords.get("multipleOf", []):
            if step and not math.isclose(value / step, round(value / step)):
                return "multipleOf", step
    return None, None


def _fails_choices(value: str, choices: list[str], closed: bool) -> bool:
    if closed:
        return value not in choices
    return not any(choice.startswith(value) for choice in choices)


def _search(pattern: str, value: str) -> bool | None:
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return None


def _type_of_start(text: str) -> str | None:
    if not text:
        return None
    first = text[0]
    if first == '"':
        return "string"
    if first in "-0123456789":
        return "number"
    if first in "tfn":
        return "literal"
    if first == "{":
        return "object"
    if first == "[":
        return "array"
    return None


def _type_fits(value_type: str, declared: list[str], candidate: _Candidate) -> bool:
    if value_type == "number":
        return bool({"number", "integer"} & set(declared))
    if value_type == "literal":
        if candidate.value[:1] == "n":
            return "null" in declared
        return "boolean" in declared
    return value_type in declared


def _looks_like_name(text: str) -> bool:
    return bool(text) and all(_NAME_CHARACTER.fullmatch(char) for char in text)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = part
    return text


def _all_malformed(
    context: str, record: StepRecord, *, tool: str | None = None
) -> StepAttribution:
    items = [
        AttributionItem("malformed", token.probability, tool=tool, example=token.text)
        for token in record.top_blocked
    ]
    return _merge(context, record, items, tool=tool)


def _merge(
    context: str,
    record: StepRecord,
    candidates: list[AttributionItem],
    *,
    tool: str | None = None,
    prefix: str | None = None,
) -> StepAttribution:
    """Sum candidates with the same target; keep the likeliest example."""
    merged: dict[tuple[Any, ...], AttributionItem] = {}
    best: dict[tuple[Any, ...], float] = {}
    for item in candidates:
        key = item.key()
        current = merged.get(key)
        if current is None:
            merged[key] = item
            best[key] = item.mass
            continue
        example = item.example if item.mass > best[key] else current.example
        best[key] = max(best[key], item.mass)
        merged[key] = AttributionItem(
            **{**current.__dict__, "mass": current.mass + item.mass, "example": example}
        )

    items = sorted(merged.values(), key=lambda item: item.mass, reverse=True)
    covered = sum(item.mass for item in items)
    return StepAttribution(
        context=context,
        items=tuple(items),
        unattributed=max(0.0, record.blocked_mass - covered),
        tool=tool,
        prefix=prefix,
    )
