"""Pydantic models of a policy file.

A policy file reads::

    policy: support-agent        # name written into every audit event
    default: deny                # tools no rule permits can never be called
    mode: enforce                # or shadow: log what would be blocked, mask nothing
    include:                     # shared fragments, optionally pinned by sha256
      - path: fragments/baseline.yaml
        sha256: 3f1c...
    groups:                      # named tool families, by name or glob pattern
      browser: ["browser_*"]
    untrusted: [fetch_url]       # results of these tools taint the session
    sensitive: [send_email]      # forbidden in a tainted session unless a
                                 # permit sets allow_tainted: true
    budgets:
      - {id: refunds, tools: [refund_order], max: 1}
    phases:
      - id: refund-after-lookup
        tools: [refund_order]
        after: lookup_order
        same_arguments: {order_id: order_id}
    tools:                       # one entry per tool name or pattern
      refund_order:
        allow: true
        arguments:               # JSON Schema keywords that narrow the tool's schema
          amount: {maximum: 100}
      delete_customer:
        allow: false
    rules:                       # rules over several tools, with CEL conditions
      - id: no-browser-after-three-steps
        effect: forbid
        tools: ["group:browser"]
        when: "step >= 3"

The first version of the format (``policy``, ``default``, ``mode`` and
``tools`` entries with ``allow`` and ``arguments``) is a subset of this one
and keeps its meaning. Every model forbids unknown keys, so a misspelt key is
an error, never a rule that silently does nothing. The meaning of each part
is documented in ``docs/policy.md``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

if TYPE_CHECKING:
    from guardrail.policy.compiled import CompiledPolicy
    from guardrail.session import Session

__all__ = [
    "AllowList",
    "ArgumentConstraint",
    "Budget",
    "Include",
    "Phase",
    "Policy",
    "Rule",
    "ToolRule",
]

ArgumentConstraint = dict[str, Any]
RuleMode = Literal["enforce", "shadow"]

# A tool selector: an exact tool name, a glob pattern (``browser_*``) or a
# group reference (``group:browser``).
SELECTOR_PATTERN = r"^(group:[A-Za-z0-9_.-]+|[A-Za-z0-9_*?\[\]!.-]+)$"
ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"

Selector = str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowList(_Strict):
    """Values one string argument (or each item of a string array) may take.

    Exactly one kind per argument: ``urls`` (scheme and host, optionally a
    port), ``paths_under`` (absolute roots) or ``email_domains``. The
    ``*_from`` fields are CEL expressions over the session that return a
    string or a list of strings, added to the static list at each step.
    """

    urls: list[str] = Field(default_factory=list)
    urls_from: str | None = None
    paths_under: list[str] = Field(default_factory=list)
    paths_under_from: str | None = None
    allow_relative: bool = False
    email_domains: list[str] = Field(default_factory=list)
    email_domains_from: str | None = None


class ToolRule(_Strict):
    """The rule of one tool (or a pattern of tools) in the ``tools`` map."""

    allow: bool
    arguments: dict[str, ArgumentConstraint] = Field(default_factory=dict)
    allow_lists: dict[str, AllowList] = Field(default_factory=dict)
    when: str | None = None
    allow_tainted: bool = False
    mode: RuleMode = "enforce"
    description: str | None = None


class Rule(_Strict):
    """A permit or forbid rule over a set of tools, with an optional condition."""

    id: str = Field(min_length=1, pattern=ID_PATTERN)
    effect: Literal["permit", "forbid"]
    tools: list[Selector] = Field(min_length=1)
    when: str | None = None
    arguments: dict[str, ArgumentConstraint] = Field(default_factory=dict)
    allow_lists: dict[str, AllowList] = Field(default_factory=dict)
    allow_tainted: bool = False
    mode: RuleMode = "enforce"
    description: str | None = None


class Budget(_Strict):
    """At most ``max`` calls, in one session, to the tools ``tools`` selects."""

    id: str = Field(min_length=1, pattern=ID_PATTERN)
    tools: list[Selector] = Field(min_length=1)
    max: int = Field(ge=0)
    mode: RuleMode = "enforce"
    description: str | None = None


class Phase(_Strict):
    """The tools ``tools`` selects are available only after ``after`` succeeded.

    ``same_arguments`` maps an argument of the gated call to an argument of
    the earlier call. The gated call may then only reuse a value that a
    successful earlier call used.
    """

    id: str = Field(min_length=1, pattern=ID_PATTERN)
    tools: list[Selector] = Field(min_length=1)
    after: Selector
    same_arguments: dict[str, str] = Field(default_factory=dict)
    mode: RuleMode = "enforce"
    description: str | None = None


class Include(_Strict):
    """A policy fragment to merge in; ``path`` is relative to this file."""

    path: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Policy(_Strict):
    """A loaded, validated policy.

    The declared fields are the top file's own content. ``sha256`` is the
    digest of the file's bytes. When the file includes fragments, it is the
    digest of the file's bytes followed by each fragment's own digest, so an
    audit event names the exact combined version that decided it. ``source`` is
    the file it came from.
    """

    policy: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    default: Literal["deny", "allow"] = "deny"
    mode: Literal["enforce", "shadow"] = "enforce"
    alert_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    include: list[Include] = Field(default_factory=list)
    groups: dict[str, list[Selector]] = Field(default_factory=dict)
    untrusted: list[Selector] = Field(default_factory=list)
    sensitive: list[Selector] = Field(default_factory=list)
    budgets: list[Budget] = Field(default_factory=list)
    phases: list[Phase] = Field(default_factory=list)
    tools: dict[Selector, ToolRule] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    source: str = Field(default="<string>", exclude=True)
    sha256: str = Field(default="", exclude=True)
    lines: dict[str, int] = Field(default_factory=dict, exclude=True)

    _fragments: tuple[Policy, ...] = PrivateAttr(default=())
    _compiled: CompiledPolicy | None = PrivateAttr(default=None)

    @field_validator("include", mode="before")
    @classmethod
    def _include_paths(cls, value: Any) -> Any:
        """Accept a bare path as shorthand for ``{path: ...}``."""
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    @property
    def name(self) -> str:
        return self.policy

    @property
    def files(self) -> tuple[str, ...]:
        """The file and every included file, whose changes change the policy."""
        return (self.source, *(fragment.source for fragment in self._fragments))

    @property
    def fragments(self) -> tuple[Policy, ...]:
        """The included fragments, each with its own source and lines."""
        return self._fragments

    def rule(self, tool: str) -> ToolRule | None:
        return self.tools.get(tool)

    def line_of(self, *path: str) -> int | None:
        """Return the line of the deepest key of ``path`` found in the file."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(".".join(path[:end]))
            if line is not None:
                return line
        return None

    def compiled(self) -> CompiledPolicy:
        """Return the policy merged with its fragments and ready to evaluate.

        The loader compiles every policy it returns, so CEL errors surface at
        load time. A policy built in code is compiled on first use and raises
        :class:`~guardrail.errors.PolicyError` then.
        """
        if self._compiled is None:
            from guardrail.policy.compiled import compile_policy

            self._compiled = compile_policy(self)
        return self._compiled

    def check_call(
        self, name: str, arguments: dict[str, Any], session: Session
    ) -> list[str]:
        """Return why the call ``name(arguments)`` breaks the policy, if it does.

        This is the post-validation of everything the grammar cannot carry:
        conditions on ``args``, allow-lists parsed for real, the exact tuple
        of a phase's ``same_arguments``, budgets. An empty list means the
        policy allows the call; the tool's own schema is checked elsewhere.
        """
        from guardrail.policy.evaluate import check_call

        return check_call(self, name, arguments, session)

    def check_calls(
        self, calls: list[tuple[str, dict[str, Any]]], session: Session
    ) -> list[str]:
        """Check the calls of one turn in order; each counts toward budgets."""
        from guardrail.policy.evaluate import check_calls

        return check_calls(self, calls, session)


def digest(data: bytes) -> str:
    """Return the hex sha256 of a policy file's bytes."""
    return hashlib.sha256(data).hexdigest()
