"""Check tool names against a tokenizer.

The grammar spells a tool name token by token inside ``"name": "..."``. A
name the tokenizer cannot reproduce exactly (unknown characters, a
normalizer that rewrites it) cannot be generated, so it is an error. Names
that start with the same tokens are legal. At the steps where they are
still indistinguishable, though, the audit cannot attribute blocked mass to
one of them, so such names are warnings, as is a name that is a prefix of
another.

Only the ``tokenizers`` library is loaded (no transformers, no torch), so
the check stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NameTokens", "load_tokenizer", "token_findings", "tokenize_names"]

_CONTEXT = '{"name": "'


@dataclass(frozen=True)
class NameTokens:
    name: str
    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    exact: bool


def load_tokenizer(path: str | Path) -> Any:
    """Load ``tokenizer.json`` from a file or a model folder.

    Raises ``FileNotFoundError`` naming the path when there is none.
    """
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json at {file}; pass a Hugging Face model folder or "
            "its tokenizer.json"
        )
    return Tokenizer.from_file(str(file))


def tokenize_names(tokenizer: Any, names: Iterable[str]) -> list[NameTokens]:
    """Return each name's tokens as the model would write them after ``"name": "``.

    The name is encoded in that context and the context's own tokens are
    removed; where a merge crosses the boundary the name is encoded alone.
    """
    prefix = tokenizer.encode(_CONTEXT, add_special_tokens=False).ids
    results: list[NameTokens] = []
    for name in names:
        full = tokenizer.encode(_CONTEXT + name + '"', add_special_tokens=False)
        if list(full.ids[: len(prefix)]) == list(prefix):
            ids = list(full.ids[len(prefix) :])
            if ids and tokenizer.decode([ids[-1]]).endswith('"'):
                ids = ids[:-1] if tokenizer.decode([ids[-1]]) == '"' else ids
        else:
            ids = list(tokenizer.encode(name, add_special_tokens=False).ids)
        tokens = tuple(tokenizer.id_to_token(i) or "" for i in ids)
        decoded = tokenizer.decode(ids).rstrip('"')
        unknown = _unknown_id(tokenizer)
        exact = decoded == name and (unknown is None or unknown not in ids)
        results.append(NameTokens(name, tokens, tuple(ids), exact))
    return results


def _unknown_id(tokenizer: Any) -> int | None:
    model = tokenizer.model
    unk = getattr(model, "unk_token", None)
    return tokenizer.token_to_id(unk) if unk else None


def token_findings(tokenizer: Any, names: Iterable[str]) -> list[tuple[str, str]]:
    """Return ``(severity, message)`` pairs for names the audit cannot separate."""
    tokenized = tokenize_names(tokenizer, sorted(set(names)))
    findings: list[tuple[str, str]] = []
    for item in tokenized:
        if not item.exact:
            findings.append(
                (
                    "error",
                    f"tool name {item.name!r} cannot be generated exactly: the "
                    f"tokenizer turns it into {list(item.tokens)}; rename the tool "
                    "to ASCII letters, digits and '_'",
                )
            )

    for index, first in enumerate(tokenized):
        for second in tokenized[index + 1 :]:
            if second.name.startswith(first.name) or first.name.startswith(second.name):
                short, long = sorted((first.name, second.name), key=len)
                findings.append(
                    (
                        "warning",
                        f"tool name {short!r} is a prefix of {long!r}: until the "
                        "closing quote the grammar cannot tell which one the model "
                        "is writing",
                    )
                )
                continue
            shared = _shared_prefix(first.ids, second.ids)
            if shared:
                tokens = list(first.tokens[:shared])
                findings.append(
                    (
                        "warning",
                        f"tool names {first.name!r} and {second.name!r} share their "
                        f"first token(s) {tokens}: blocked mass on those steps "
                        "cannot be attributed to one of them",
                    )
                )
    return findings


def _shared_prefix(left: tuple[int, ...], right: tuple[int, ...]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count
