"""URL, path and email allow-lists: the parser and the grammar pattern agree.

Every case runs twice, through :meth:`check` and through the regular
expression the grammar gets, so a spelling cannot pass one and fail the
other. A subset also runs through llguidance with the real tokenizer.
"""

from __future__ import annotations

import json
import re

import pytest

from guardrail.policy.allowlists import (
    AllowListError,
    EmailAllowList,
    PathAllowList,
    UrlAllowList,
)

URLS = UrlAllowList.parse(
    [
        "https://docs.python.org",
        "https://*.readthedocs.io",
        "http://127.0.0.1:8080",
        "https://[::1]",
    ]
)

URL_CASES = [
    ("https://docs.python.org", True),
    ("https://docs.python.org/", True),
    ("https://docs.python.org/3/library/pathlib.html?x=1#walk", True),
    ("https://docs.python.org/a%20b", True),
    ("https://pip.readthedocs.io/en/stable/", True),
    ("https://a.b.readthedocs.io/", True),
    ("http://127.0.0.1:8080/health", True),
    ("https://[::1]/", True),
    # Case tricks: scheme and host must be written in lower case.
    ("HTTPS://docs.python.org/", False),
    ("https://DOCS.python.org/", False),
    ("https://docs.Python.org/", False),
    # Lookalikes and suffix tricks.
    ("https://docs.python.org.evil.example/", False),
    ("https://docs-python.org/", False),
    ("https://docs.pyth\u043en.org/", False),
    ("https://docs.python.org\u3002evil.example/", False),
    ("https://\uff44ocs.python.org/", False),
    ("https://evildocs.python.org/", False),
    ("https://readthedocs.io/", False),
    ("https://x.readthedocs.io.evil.example/", False),
    # User information.
    ("https://docs.python.org@evil.example/", False),
    ("https://user:pass@docs.python.org/", False),
    ("https://evil.example@docs.python.org/", False),
    ("https://evil.example\\@docs.python.org/", False),
    # Trailing dot, ports, percent-encoding, whitespace, backslash.
    ("https://docs.python.org./", False),
    ("https://docs.python.org:443/", False),
    ("https://docs.python.org:8443/", False),
    ("http://127.0.0.1:80/", False),
    ("http://127.0.0.1/", False),
    ("https://docs%2epython.org/", False),
    ("https://docs.python.org%2F@evil.example/", False),
    ("https://docs.python.org/%zz", False),
    ("https://docs.python.org/ x", False),
    ("https://docs.python.org\\evil.example/", False),
    ("https://docs.python.org\n", False),
    (" https://docs.python.org/", False),
    # Other schemes and IP spellings.
    ("http://docs.python.org/", False),
    ("javascript://docs.python.org/", False),
    ("//docs.python.org/", False),
    ("https://[0:0:0:0:0:0:0:1]/", False),
    ("https://[::ffff:127.0.0.1]/", False),
    ("http://2130706433:8080/", False),
    ("http://0x7f.0.0.1:8080/", False),
]


@pytest.mark.parametrize(("value", "allowed"), URL_CASES)
def test_url_check(value: str, allowed: bool) -> None:
    assert (URLS.check(value) is None) is allowed


@pytest.mark.parametrize(("value", "allowed"), URL_CASES)
def test_url_pattern_agrees_with_check(value: str, allowed: bool) -> None:
    assert (re.fullmatch(URLS.pattern, value) is not None) is allowed


@pytest.mark.parametrize(
    "entry",
    [
        "https://docs.python.org/path",
        "https://user@docs.python.org",
        "HTTPS://docs.python.org",
        "https://Docs.python.org",
        "https://docs.python.org.",
        "https://*.com",
        "https://docs.python.org:0",
        "https://docs.python.org:70000",
        "https://[not-ipv6]",
        "docs.python.org",
    ],
)
def test_invalid_url_entry_is_rejected(entry: str) -> None:
    with pytest.raises(AllowListError):
        UrlAllowList.parse([entry])


PATHS = PathAllowList.parse(["/workspace", "/tmp/scratch"], allow_relative=False)
RELATIVE = PathAllowList.parse(["/workspace"], allow_relative=True)

PATH_CASES = [
    ("/workspace", True),
    ("/workspace/", True),
    ("/workspace/src/tree.py", True),
    ("/workspace/.github/ci.yml", True),
    ("/workspace/...", True),
    ("/workspace/a b/c.txt", True),
    ("/tmp/scratch/x", True),
    ("/workspace/../etc/passwd", False),
    ("/workspace/src/../../etc/passwd", False),
    ("/workspace/./x", False),
    ("/workspace//x", False),
    ("/workspace-old/x", False),
    ("/workspacex", False),
    ("/tmp/scratchpad/x", False),
    ("/tmp", False),
    ("/etc/passwd", False),
    ("workspace/x", False),
    ("src/tree.py", False),
    ("~/x", False),
    ("/workspace/%2e%2e/etc", False),
    ("/workspace\\..\\etc", False),
    ("/workspace/x\x00.py", False),
    ("/workspace/\u2024\u2024/etc", False),
    ("/workspace/x:y", False),
    ("", False),
]


@pytest.mark.parametrize(("value", "allowed"), PATH_CASES)
def test_path_check(value: str, allowed: bool) -> None:
    assert (PATHS.check(value) is None) is allowed


@pytest.mark.parametrize(("value", "allowed"), PATH_CASES)
def test_path_pattern_agrees_with_check(value: str, allowed: bool) -> None:
    assert (re.fullmatch(PATHS.pattern, value) is not None) is allowed


RELATIVE_CASES = [
    ("src/tree.py", True),
    ("tree.py", True),
    ("/workspace/src/tree.py", True),
    ("../etc/passwd", False),
    ("src/../../etc", False),
    ("./src", False),
    ("/etc/passwd", False),
]


@pytest.mark.parametrize(("value", "allowed"), RELATIVE_CASES)
def test_relative_path_check_and_pattern(value: str, allowed: bool) -> None:
    assert (RELATIVE.check(value) is None) is allowed
    assert (re.fullmatch(RELATIVE.pattern, value) is not None) is allowed


@pytest.mark.parametrize("root", ["workspace", "/workspace/", "/a/../b", "/a//b", ""])
def test_invalid_root_is_rejected(root: str) -> None:
    with pytest.raises(AllowListError):
        PathAllowList.parse([root], allow_relative=False)


def test_relative_paths_need_one_root() -> None:
    with pytest.raises(AllowListError, match="exactly one root"):
        PathAllowList.parse(["/a", "/b"], allow_relative=True)


EMAILS = EmailAllowList.parse(["example.com", "*.corp.example"])

EMAIL_CASES = [
    ("alice@example.com", True),
    ("Alice.Smith+tag@example.com", True),
    ("bob@eu.corp.example", True),
    ("bob@a.b.corp.example", True),
    ("alice@Example.com", False),
    ("alice@example.com.", False),
    ("alice@example.com.evil.example", False),
    ("alice@evilexample.com", False),
    ("alice@corp.example", False),
    ("alice@ex\u0430mple.com", False),
    ("alice%evil.example@example.com", False),
    ("evil@evil.example@example.com", False),
    ('"alice@example.com"@evil.example', False),
    ("Alice <alice@example.com>", False),
    ("alice@example.com\n", False),
    (".alice@example.com", False),
    ("alice.@example.com", False),
    ("@example.com", False),
    ("alice@", False),
]


@pytest.mark.parametrize(("value", "allowed"), EMAIL_CASES)
def test_email_check(value: str, allowed: bool) -> None:
    assert (EMAILS.check(value) is None) is allowed


@pytest.mark.parametrize(("value", "allowed"), EMAIL_CASES)
def test_email_pattern_agrees_with_check(value: str, allowed: bool) -> None:
    assert (re.fullmatch(EMAILS.pattern, value) is not None) is allowed


def test_non_string_values_are_rejected() -> None:
    assert URLS.check(42) is not None
    assert PATHS.check(None) is not None
    assert EMAILS.check(["alice@example.com"]) is not None


def test_empty_allow_list_has_no_pattern() -> None:
    with pytest.raises(AllowListError, match="empty"):
        _ = EmailAllowList.parse([]).pattern


# A subset of the cases through the grammar engine itself, with the real
# tokenizer, both as plain JSON text and with non-ASCII written as \u escapes.
_GRAMMAR_CASES = [
    (URLS, "https://docs.python.org/3/", True),
    (URLS, "https://docs.python.org.evil.example/", False),
    (URLS, "https://docs.python.org@evil.example/", False),
    (URLS, "https://docs.pyth\u043en.org/", False),
    (URLS, "HTTPS://docs.python.org/", False),
    (PATHS, "/workspace/src/tree.py", True),
    (PATHS, "/workspace/../etc/passwd", False),
    (PATHS, "/workspace-old/x", False),
    (EMAILS, "alice@example.com", True),
    (EMAILS, "alice@example.com.evil.example", False),
    (EMAILS, "alice@ex\u0430mple.com", False),
]


@pytest.mark.model
@pytest.mark.parametrize(("allow_list", "value", "allowed"), _GRAMMAR_CASES)
@pytest.mark.parametrize("ascii_escapes", [False, True])
def test_grammar_engine_agrees_with_check(
    hf_tokenizer, allow_list, value: str, allowed: bool, ascii_escapes: bool
) -> None:
    import llguidance
    import llguidance.hf

    tokenizer = _ll_tokenizer(hf_tokenizer)
    schema = {"type": "string", "pattern": allow_list.pattern}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    text = json.dumps(value, ensure_ascii=ascii_escapes)

    accepted = True
    for token in hf_tokenizer.encode(text, add_special_tokens=False):
        if not matcher.consume_token(token):
            accepted = False
            break
    accepted = accepted and matcher.is_accepting()

    assert accepted is allowed
    assert (allow_list.check(value) is None) is allowed


_LL_TOKENIZERS: dict[int, object] = {}


def _ll_tokenizer(hf_tokenizer):
    import llguidance.hf

    key = id(hf_tokenizer)
    if key not in _LL_TOKENIZERS:
        _LL_TOKENIZERS[key] = llguidance.hf.from_tokenizer(hf_tokenizer)
    return _LL_TOKENIZERS[key]
