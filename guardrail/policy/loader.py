"""Load policy files from YAML, with errors that point at file:line.

ruamel.yaml keeps the line of every key, so a pydantic error at
``tools.refund_order.alow`` is reported at the line where ``alow`` is written,
with a did-you-mean hint for misspelt keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from guardrail.errors import PolicyError
from guardrail.policy.model import Policy, ToolRule, digest

__all__ = ["load_policy", "load_policy_text", "suggest"]


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``.

    Raises :class:`PolicyError` with the file, line and a fix for YAML syntax
    errors, unknown keys, wrong types and missing fields.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PolicyError(
            f"cannot read policy file: {err.strerror}", source=str(path)
        ) from err

    return load_policy_text(data, source=str(path))


def load_policy_text(data: bytes | str, *, source: str = "<string>") -> Policy:
    """Validate policy YAML given as text; ``source`` names it in errors."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(
            f"policy file is not UTF-8 (invalid byte at offset {err.start})",
            source=source,
        ) from err

    document = _parse_yaml(text, source)
    if not isinstance(document, Mapping):
        raise PolicyError(
            "a policy file must be a YAML mapping with at least 'policy:' and 'tools:'",
            source=source,
            line=1,
        )

    try:
        policy = Policy.model_validate(_plain(document))
    except ValidationError as err:
        raise _policy_error(err, document, source) from err

    return policy.model_copy(
        update={
            "source": source,
            "sha256": digest(raw),
            "lines": _key_lines(document),
        }
    )


def suggest(name: str, candidates: Sequence[str]) -> str:
    """Return a did-you-mean hint (with leading space) or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not matches:
        return ""
    return f" Did you mean {matches[0]!r}?"


def _parse_yaml(text: str, source: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "invalid YAML"
        raise PolicyError(
            f"invalid YAML: {problem}; check indentation and quoting",
            source=source,
            line=line,
        ) from err


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(key): _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


_INTERNAL_FIELDS = {"source", "sha256", "lines"}


def _policy_error(err: ValidationError, document: Any, source: str) -> PolicyError:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    dotted = ".".join(str(part) for part in loc) or "(top level)"
    line = _line_of(document, loc)

    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        model = ToolRule if len(loc) == 3 and loc[0] == "tools" else Policy
        fields = [f for f in model.model_fields if f not in _INTERNAL_FIELDS]
        message = (
            f"unknown key {key!r} at {dotted}.{suggest(key, fields)} "
            f"Allowed keys here: {', '.join(fields)}."
        )
    elif first["type"] == "missing":
        message = f"missing required key {dotted}"
    else:
        value = first.get("input")
        message = f"invalid value {value!r} at {dotted}: {first['msg']}"

    rule = str(loc[1]) if len(loc) >= 2 and loc[0] == "tools" else None
    return PolicyError(message, source=source, line=line, rule=rule)


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map each dotted key path (``tools.x.allow``) to its 1-based line."""
    lines: dict[str, int] = {}
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            lines[path] = node.lc.key(key)[0] + 1
            lines.update(_key_lines(value, path))
    return lines


def _line_of(document: Any, loc: tuple[Any, ...]) -> int | None:
    """Return the 1-based line of the deepest part of ``loc`` present in YAML."""
    node = document
    line: int | None = 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int):
            if part >= len(node):
                break
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            if isinstance(node, CommentedMap | CommentedSeq):
                line = node.lc.line + 1
            break
    return line
