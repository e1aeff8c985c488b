"""Load policy files from YAML, with errors that point at file:line.

ruamel.yaml keeps the line of every key, so a pydantic error at
``tools.refund_order.alow`` is reported at the line where ``alow`` is written,
with a did-you-mean hint for misspelt keys.

A policy may include fragments (``include:``), resolved relative to the
including file, loaded with the same checks, optionally pinned by sha256,
and merged at compile time. Loading collects every problem it finds
(:func:`check_policy_file`) so that ``guardrail policy check`` can list them
all; :func:`load_policy` raises the first.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from guardrail.errors import PolicyError
from guardrail.policy.model import (
    AllowList,
    Budget,
    Include,
    Phase,
    Policy,
    Rule,
    ToolRule,
    digest,
)

__all__ = [
    "MAX_INCLUDE_DEPTH",
    "check_policy_file",
    "check_policy_text",
    "load_policy",
    "load_policy_text",
    "suggest",
]

MAX_INCLUDE_DEPTH = 8
_FRAGMENT_NAME = "fragment"


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path`` and the files it includes.

    Raises :class:`PolicyError` with the file, line and a fix for YAML syntax
    errors, unknown keys, wrong types, missing fields, CEL that does not
    compile, and includes that are missing, cyclic or changed since pinned.
    """
    policy, problems = check_policy_file(path)
    if problems or policy is None:
        raise _first(problems, str(path))
    return policy


def load_policy_text(
    data: bytes | str, *, source: str = "<string>", base_dir: str | Path | None = None
) -> Policy:
    """Validate policy YAML given as text; ``source`` names it in errors.

    Includes are resolved against ``base_dir`` (default: the folder of
    ``source``, or the working directory for ``<string>``).
    """
    policy, problems = check_policy_text(data, source=source, base_dir=base_dir)
    if problems or policy is None:
        raise _first(problems, source)
    return policy


def check_policy_file(path: str | Path) -> tuple[Policy | None, list[PolicyError]]:
    """Load ``path``; return the policy (None if invalid) and every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, [
            PolicyError(f"cannot read policy file: {err.strerror}", source=str(path))
        ]
    return check_policy_text(data, source=str(path))


def check_policy_text(
    data: bytes | str, *, source: str = "<string>", base_dir: str | Path | None = None
) -> tuple[Policy | None, list[PolicyError]]:
    """Like :func:`check_policy_file`, for text already read."""
    from guardrail.policy.compiled import compile_problems

    raw = data.encode() if isinstance(data, str) else data
    if base_dir is None:
        base_dir = Path(source).parent if source != "<string>" else Path.cwd()
    loading = _Loading()
    policy = _load_document(raw, source, Path(base_dir), loading, fragment=False)
    if policy is None or loading.problems:
        return None, loading.problems

    fragments = tuple(loading.fragments)
    if fragments:
        combined = hashlib.sha256(raw)
        for fragment in fragments:
            combined.update(b"\0" + fragment.sha256.encode())
        policy = policy.model_copy(update={"sha256": combined.hexdigest()})
    policy._fragments = fragments

    compiled, problems = compile_problems(policy)
    if problems:
        return None, problems
    policy._compiled = compiled
    return policy, []


def suggest(name: str, candidates: Sequence[str]) -> str:
    """Return a did-you-mean hint (with leading space) or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not matches:
        return ""
    return f" Did you mean {matches[0]!r}?"


@dataclass
class _Loading:
    """State shared while one policy and its includes load."""

    problems: list[PolicyError] = field(default_factory=list)
    fragments: list[Policy] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    stack: list[str] = field(default_factory=list)


def _first(problems: list[PolicyError], source: str) -> PolicyError:
    if not problems:
        return PolicyError("policy could not be loaded", source=source)
    first = problems[0]
    if len(problems) > 1:
        more = len(problems) - 1
        return PolicyError(
            f"{first.message} ({more} more problem{'s' if more > 1 else ''}: run "
            "'guardrail policy check' to list them all)",
            source=first.source,
            line=first.line,
            rule=first.rule,
        )
    return first


def _load_document(
    raw: bytes, source: str, base_dir: Path, loading: _Loading, *, fragment: bool
) -> Policy | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        loading.problems.append(
            PolicyError(
                f"policy file is not UTF-8 (invalid byte at offset {err.start})",
                source=source,
            )
        )
        return None

    try:
        document = _parse_yaml(text, source)
    except PolicyError as err:
        loading.problems.append(err)
        return None
    if not isinstance(document, Mapping):
        loading.problems.append(
            PolicyError(
                "a policy file must be a YAML mapping with at least 'policy:' "
                "and 'tools:' (or 'rules:')",
                source=source,
                line=1,
            )
        )
        return None

    plain = _plain(document)
    if fragment and "policy" not in plain:
        plain["policy"] = _FRAGMENT_NAME
    try:
        policy = Policy.model_validate(plain)
    except ValidationError as err:
        loading.problems.extend(_policy_errors(err, document, source))
        return None

    policy = policy.model_copy(
        update={"source": source, "sha256": digest(raw), "lines": _key_lines(document)}
    )
    loading.stack.append(_identity(source))
    try:
        for index, include in enumerate(policy.include):
            _load_include(policy, index, include, base_dir, loading)
    finally:
        loading.stack.pop()
    return policy


def _load_include(
    parent: Policy, index: int, include: Include, base_dir: Path, loading: _Loading
) -> None:
    line = parent.line_of("include", str(index))
    target = Path(include.path)
    if not target.is_absolute():
        target = base_dir / target
    identity = _identity(str(target))

    def problem(message: str) -> None:
        loading.problems.append(PolicyError(message, source=parent.source, line=line))

    if identity in loading.stack:
        chain = " -> ".join([*loading.stack, identity])
        problem(f"include cycle: {chain}; remove one of these includes")
        return
    if len(loading.stack) >= MAX_INCLUDE_DEPTH:
        problem(f"includes nest deeper than {MAX_INCLUDE_DEPTH} files; flatten them")
        return
    try:
        raw = target.read_bytes()
    except OSError as err:
        problem(
            f"cannot read included file {include.path!r} ({target}): "
            f"{err.strerror}; paths are relative to the including file"
        )
        return

    actual = digest(raw)
    if include.sha256 is not None and include.sha256 != actual:
        problem(
            f"included file {include.path!r} has sha256 {actual}, but the include "
            f"pins {include.sha256}; review the change, then update the pin"
        )
        return
    if identity in loading.seen:
        return
    loading.seen.add(identity)

    fragment = _load_document(raw, str(target), target.parent, loading, fragment=True)
    if fragment is not None:
        loading.fragments.append(fragment)


def _identity(source: str) -> str:
    return os.path.normcase(os.path.abspath(source)) if source != "<string>" else source


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
_LIST_MODELS: dict[str, type[BaseModel]] = {
    "rules": Rule,
    "budgets": Budget,
    "phases": Phase,
    "include": Include,
}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """Return the model whose keys are allowed at ``loc[:-1]``."""
    if len(loc) >= 4 and loc[-3] == "allow_lists":
        return AllowList
    if len(loc) == 3 and loc[0] == "tools":
        return ToolRule
    if len(loc) == 3 and loc[0] in _LIST_MODELS:
        return _LIST_MODELS[str(loc[0])]
    return Policy


def _policy_errors(
    err: ValidationError, document: Any, source: str
) -> list[PolicyError]:
    details = err.errors()
    # A misspelt key also makes the real key missing; the did-you-mean
    # message on the misspelt key covers both, so the other is left out.
    misspelt = {
        tuple(detail["loc"][:-1])
        for detail in details
        if detail["type"] == "extra_forbidden"
    }
    errors: list[tuple[int, int, PolicyError]] = []
    for detail in details:
        loc = tuple(detail["loc"])
        if detail["type"] == "missing" and loc[:-1] in misspelt:
            continue
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        line = _line_of(document, loc)

        if detail["type"] == "extra_forbidden":
            key = str(loc[-1])
            fields = [
                name
                for name in _model_at(loc).model_fields
                if name not in _INTERNAL_FIELDS
            ]
            message = (
                f"unknown key {key!r} at {dotted}.{suggest(key, fields)} "
                f"Allowed keys here: {', '.join(fields)}."
            )
        elif detail["type"] == "missing":
            message = f"missing required key {dotted}"
        else:
            value = detail.get("input")
            message = f"invalid value {value!r} at {dotted}: {detail['msg']}"

        rule = str(loc[1]) if len(loc) >= 2 and loc[0] == "tools" else None
        rank = 0 if detail["type"] == "extra_forbidden" else 1
        errors.append(
            (line or 0, rank, PolicyError(message, source=source, line=line, rule=rule))
        )
    errors.sort(key=lambda item: item[:2])
    return [error for _, _, error in errors]


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Map each dotted key path (``tools.x.allow``, ``rules.0.when``) to its line."""
    lines: dict[str, int] = {}
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            lines[path] = node.lc.key(key)[0] + 1
            lines.update(_key_lines(value, path))
    elif isinstance(node, CommentedSeq):
        for index, value in enumerate(node):
            path = f"{prefix}.{index}" if prefix else str(index)
            lines[path] = node.lc.item(index)[0] + 1
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
