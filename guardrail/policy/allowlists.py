"""Allow-lists for URLs, file paths and email addresses.

Each allow-list is enforced twice: as a JSON Schema ``pattern`` that the
grammar engine applies token by token, and by :meth:`AllowList.check`, a
parser run on the finished call. Both accept the same language, which is
deliberately narrower than what the standards allow, so that no spelling
can mean one host (or root) to the check and another to the tool:

- URL: ``scheme://host[:port]`` exactly as listed, followed by nothing or by
  ``/``, ``?`` or ``#``. Only printable ASCII: no userinfo (``@`` before the
  host), no percent-encoding, upper case or trailing dot in the host, no
  backslash, no whitespace, no Unicode lookalikes. IP literals (IPv4, or
  IPv6 in brackets) match only when listed, in canonical form. A listed
  ``*.example.com`` admits subdomains of example.com, not example.com itself.
  A port is allowed only when the entry names it.
- Path: an absolute path equal to or below a listed root, or, with
  ``allow_relative``, a relative path read as below the (single) root. No
  ``.`` or ``..`` segments, no empty segments, no backslash, ``~``, ``%``,
  ``:`` or non-ASCII characters. The check is lexical: a symlink under the
  root that points outside it is the tool's to refuse (resolve the path and
  open it with ``O_NOFOLLOW``), because the files are not on this machine.
- Email: ``local@domain`` with the domain exactly as listed (lower case) or a
  subdomain of a listed ``*.domain``; the local part is letters, digits and
  ``. _ + -``, so no quoted forms, display names, ``%`` routing or second ``@``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "AllowListError",
    "AllowListMatcher",
    "EmailAllowList",
    "PathAllowList",
    "UrlAllowList",
    "build_allow_list",
]

Kind = Literal["urls", "paths_under", "email_domains"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")

# After the host: RFC 3986 path, query and fragment characters, with "%"
# only as the start of a two-digit escape.
_URL_REST_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/?#"
_URL_REST = rf"(?:[/?#](?:[{_URL_REST_CHARS}]|%[0-9A-Fa-f]{{2}})*)?"
_URL_REST_RE = re.compile(rf"^{_URL_REST}$")

# One path segment: not empty, not "." and not "..".
_SEGMENT_CHAR = r"A-Za-z0-9 _+@=,()\-"
_SEGMENT = (
    rf"(?:[{_SEGMENT_CHAR}][{_SEGMENT_CHAR}.]*"
    rf"|\.[{_SEGMENT_CHAR}][{_SEGMENT_CHAR}.]*"
    rf"|\.\.[{_SEGMENT_CHAR}.]+)"
)
_SEGMENT_RE = re.compile(rf"^{_SEGMENT}$")

_LOCAL_PART = r"[A-Za-z0-9_+\-]+(?:\.[A-Za-z0-9_+\-]+)*"
_LOCAL_PART_RE = re.compile(rf"^{_LOCAL_PART}$")


class AllowListError(ValueError):
    """An allow-list entry that is not a valid URL origin, root or domain."""


class AllowListMatcher(Protocol):
    kind: Kind

    @property
    def pattern(self) -> str:
        """A regular expression (Python and Rust syntax) for the grammar."""
        ...

    def check(self, value: object) -> str | None:
        """Return why ``value`` is not allowed, or None when it is."""
        ...

    def describe(self) -> str: ...


def _escape(text: str) -> str:
    """Escape the few metacharacters that hosts, schemes and roots contain.

    ``re.escape`` also escapes characters such as ``-`` and ``:`` whose
    escaped form not every regex engine accepts, so only these are escaped.
    """
    return re.sub(r"([.+\[\]()])", r"\\\1", text)


def _check_domain(text: str, what: str) -> tuple[str, bool]:
    """Return (domain, is_wildcard) for ``example.com`` or ``*.example.com``."""
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if not _DNS_NAME.fullmatch(name) or ("." not in name and wildcard):
        raise AllowListError(
            f"invalid {what} {text!r}: write a lower-case DNS name such as "
            "'example.com' (or '*.example.com' for its subdomains), without "
            "a trailing dot"
        )
    return name, wildcard


@dataclass(frozen=True)
class _UrlEntry:
    scheme: str
    host: str
    wildcard: bool
    port: str | None

    def host_pattern(self) -> str:
        if self.wildcard:
            return rf"(?:{_LABEL}\.)+{_escape(self.host)}"
        return _escape(self.host)

    def text(self) -> str:
        host = f"*.{self.host}" if self.wildcard else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}"


def _parse_url_entry(text: str) -> _UrlEntry:
    match = re.fullmatch(r"([^:/]+)://([^/?#@]+)/?", text)
    if match is None:
        raise AllowListError(
            f"invalid URL allow-list entry {text!r}: write scheme://host or "
            "scheme://host:port, with no user, path, query or fragment"
        )
    scheme, authority = match.groups()
    if not _SCHEME.fullmatch(scheme):
        raise AllowListError(f"invalid scheme in {text!r}: use lower case, e.g. https")

    port: str | None = None
    if authority.startswith("["):
        host, _, after = authority[1:].partition("]")
        if after:
            if not after.startswith(":"):
                raise AllowListError(f"invalid IPv6 entry {text!r}")
            port = after[1:]
        try:
            canonical = str(ipaddress.IPv6Address(host))
        except ValueError as err:
            raise AllowListError(f"invalid IPv6 address in {text!r}") from err
        host = f"[{canonical}]"
        wildcard = False
    else:
        host, _, port_text = authority.partition(":")
        port = port_text or None
        if re.fullmatch(r"[0-9.]+", host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError as err:
                raise AllowListError(f"invalid IPv4 address in {text!r}") from err
            wildcard = False
        else:
            host, wildcard = _check_domain(host, "host in URL allow-list entry")

    if port is not None and not (
        re.fullmatch(r"[1-9][0-9]{0,4}", port) and int(port) <= 65535
    ):
        raise AllowListError(f"invalid port in {text!r}: use 1-65535")
    return _UrlEntry(scheme=scheme, host=host, wildcard=wildcard, port=port)


@dataclass(frozen=True)
class UrlAllowList:
    entries: tuple[_UrlEntry, ...]
    kind: Kind = "urls"

    @classmethod
    def parse(cls, values: Iterable[str]) -> UrlAllowList:
        return cls(entries=tuple(_parse_url_entry(value) for value in values))

    @property
    def pattern(self) -> str:
        if not self.entries:
            raise AllowListError("an empty allow-list has no pattern")
        origins = []
        for entry in self.entries:
            port = f":{entry.port}" if entry.port else ""
            origins.append(f"{_escape(entry.scheme)}://{entry.host_pattern()}{port}")
        return f"^(?:{'|'.join(origins)}){_URL_REST}$"

    def describe(self) -> str:
        return "URLs " + ", ".join(entry.text() for entry in self.entries)

    def check(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a URL string, got {type(value).__name__}"
        bad = _first_bad_character(value, allowed_space=False)
        if bad is not None:
            return f"URL {value!r} contains {bad}"

        match = re.fullmatch(r"([^:/?#]+)://([^/?#]*)(.*)", value, flags=re.DOTALL)
        if match is None:
            return f"{value!r} is not an absolute URL (scheme://host)"
        scheme, authority, rest = match.groups()
        if "@" in authority:
            return f"URL {value!r} has user information before the host"
        if not _URL_REST_RE.fullmatch(rest):
            return f"URL {value!r} has characters after the host that are not allowed"

        for entry in self.entries:
            if scheme == entry.scheme and _authority_matches(authority, entry):
                return _cross_check_url(value, authority)
        return f"URL {value!r} is not in the allow-list ({self.describe()})"


def _authority_matches(authority: str, entry: _UrlEntry) -> bool:
    if entry.port is not None:
        host, separator, port = authority.rpartition(":")
        if not separator or port != entry.port:
            return False
    else:
        host = authority
    if entry.wildcard:
        return _is_subdomain(host, entry.host)
    return host == entry.host


def _is_subdomain(host: str, base: str) -> bool:
    """Tell whether ``host`` is ``label(.label)*.base`` in lower case."""
    if not host.endswith("." + base):
        return False
    labels = host[: -len(base) - 1].split(".")
    return all(re.fullmatch(_LABEL, label) for label in labels)


def _cross_check_url(value: str, authority: str) -> str | None:
    """Parse again with urllib as a second opinion on the host and user."""
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as err:
        return f"URL {value!r} does not parse: {err}"
    if parts.username is not None or parts.password is not None:
        return f"URL {value!r} has user information before the host"
    host = authority.rpartition(":")[0] if port is not None else authority
    if parts.netloc != authority or (parts.hostname or "") != host.strip("[]"):
        return f"URL {value!r} parses to another host"
    return None


def _first_bad_character(value: str, *, allowed_space: bool) -> str | None:
    for char in value:
        code = ord(char)
        if code > 0x7E:
            return f"the non-ASCII character {char!r} (U+{code:04X})"
        if code < 0x20 or code == 0x7F or (char == " " and not allowed_space):
            return f"the control or space character {char!r}"
        if char == "\\":
            return "a backslash"
    return None


@dataclass(frozen=True)
class PathAllowList:
    roots: tuple[str, ...]
    allow_relative: bool = False
    kind: Kind = "paths_under"

    @classmethod
    def parse(cls, values: Iterable[str], *, allow_relative: bool) -> PathAllowList:
        roots = tuple(_check_root(value) for value in values)
        if allow_relative and len(roots) != 1:
            raise AllowListError(
                "allow_relative needs exactly one root, because a relative "
                f"path is read as below it; got {len(roots)}"
            )
        return cls(roots=roots, allow_relative=allow_relative)

    @property
    def pattern(self) -> str:
        if not self.roots:
            raise AllowListError("an empty allow-list has no pattern")
        branches = []
        for root in self.roots:
            if root == "/":
                branches.append(rf"/(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?")
            else:
                branches.append(rf"{_escape(root)}(?:/{_SEGMENT})*/?")
        if self.allow_relative:
            branches.append(rf"{_SEGMENT}(?:/{_SEGMENT})*/?")
        return f"^(?:{'|'.join(branches)})$"

    def describe(self) -> str:
        relative = " (or relative to it)" if self.allow_relative else ""
        return "paths under " + ", ".join(self.roots) + relative

    def check(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected a path string, got {type(value).__name__}"
        bad = _first_bad_character(value, allowed_space=True)
        if bad is not None:
            return f"path {value!r} contains {bad}"
        if not value:
            return "path is empty"

        absolute = value.startswith("/")
        if not absolute and not self.allow_relative:
            return f"path {value!r} is relative; write an absolute path under a root"
        segments = value.strip("/").split("/") if value.strip("/") else []
        for segment in segments:
            if not _SEGMENT_RE.fullmatch(segment):
                return (
                    f"path {value!r} has the segment {segment!r}; '.', '..', "
                    "empty segments and characters such as ~ % : are not allowed"
                )

        resolved = posixpath.normpath(
            value if absolute else posixpath.join(self.roots[0], value)
        )
        for root in self.roots:
            inside = root == "/" or resolved == root or resolved.startswith(root + "/")
            if inside and (not absolute or _has_prefix(value, root)):
                return None
        return f"path {value!r} is not under {', '.join(self.roots)}"


def _has_prefix(value: str, root: str) -> bool:
    return root == "/" or value == root or value.startswith(root + "/")


def _check_root(root: str) -> str:
    if root == "/":
        return root
    segments = root.split("/")
    valid = (
        root.startswith("/")
        and not root.endswith("/")
        and all(_SEGMENT_RE.fullmatch(s) for s in segments[1:])
    )
    if not valid:
        raise AllowListError(
            f"invalid root {root!r}: write an absolute path without a trailing "
            "slash, '.', '..' or empty segments, such as '/workspace'"
        )
    return root


@dataclass(frozen=True)
class EmailAllowList:
    domains: tuple[tuple[str, bool], ...]
    kind: Kind = "email_domains"

    @classmethod
    def parse(cls, values: Iterable[str]) -> EmailAllowList:
        return cls(
            domains=tuple(_check_domain(value, "email domain") for value in values)
        )

    @property
    def pattern(self) -> str:
        hosts = [
            rf"(?:{_LABEL}\.)+{_escape(name)}" if wildcard else _escape(name)
            for name, wildcard in self.domains
        ]
        if not hosts:
            raise AllowListError("an empty allow-list has no pattern")
        return rf"^{_LOCAL_PART}@(?:{'|'.join(hosts)})$"

    def describe(self) -> str:
        names = [f"*.{n}" if w else n for n, w in self.domains]
        return "email domains " + (", ".join(names) or "(none)")

    def check(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"expected an email address string, got {type(value).__name__}"
        bad = _first_bad_character(value, allowed_space=False)
        if bad is not None:
            return f"email address {value!r} contains {bad}"
        local, at, domain = value.rpartition("@")
        if not at or not _LOCAL_PART_RE.fullmatch(local):
            return f"{value!r} is not a plain address local@domain"
        for name, wildcard in self.domains:
            if _is_subdomain(domain, name) if wildcard else domain == name:
                return None
        return f"email address {value!r} is not in the allow-list ({self.describe()})"


def build_allow_list(
    kind: Kind, values: Iterable[str], *, allow_relative: bool = False
) -> AllowListMatcher:
    """Return the matcher for ``kind``; raise :class:`AllowListError` on a bad entry."""
    if kind == "urls":
        return UrlAllowList.parse(values)
    if kind == "paths_under":
        return PathAllowList.parse(values, allow_relative=allow_relative)
    return EmailAllowList.parse(values)
