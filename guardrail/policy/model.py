"""Pydantic models of a policy file.

A policy file reads::

    policy: support-agent        # name written into every audit event
    default: deny                # tools not listed can never be called
    mode: enforce                # or shadow: log what would be blocked, mask nothing
    tools:
      refund_order:
        allow: true
        arguments:               # JSON Schema keywords that narrow the tool's schema
          amount: {maximum: 100}
      delete_customer:
        allow: false

Every model forbids unknown keys, so a misspelt key is an error, never a rule
that silently does nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ArgumentConstraint", "Policy", "ToolRule"]

ArgumentConstraint = dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolRule(_Strict):
    """What the policy says about one tool."""

    allow: bool
    arguments: dict[str, ArgumentConstraint] = Field(default_factory=dict)


class Policy(_Strict):
    """A loaded, validated policy.

    ``sha256`` is the digest of the file's bytes, so an audit event names the
    exact version that decided it. ``source`` is the file it came from.
    """

    policy: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    default: Literal["deny", "allow"] = "deny"
    mode: Literal["enforce", "shadow"] = "enforce"
    tools: dict[str, ToolRule] = Field(default_factory=dict)

    source: str = Field(default="<string>", exclude=True)
    sha256: str = Field(default="", exclude=True)
    lines: dict[str, int] = Field(default_factory=dict, exclude=True)

    @property
    def name(self) -> str:
        return self.policy

    def rule(self, tool: str) -> ToolRule | None:
        return self.tools.get(tool)

    def line_of(self, *path: str) -> int | None:
        """Return the line of the deepest key of ``path`` found in the file."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(".".join(path[:end]))
            if line is not None:
                return line
        return None


def digest(data: bytes) -> str:
    """Return the hex sha256 of a policy file's bytes."""
    return hashlib.sha256(data).hexdigest()
