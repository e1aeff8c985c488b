"""Exceptions raised by guardrail.

The hierarchy separates the caller's mistakes from ours, because the CLI maps
the first to exit code 2 and the proxy to HTTP 400, and the second to exit
code 1 and HTTP 5xx::

    GuardrailError
    ├── InputError              the caller's mistake: fix the input and retry
    │   ├── PolicyError         a policy file is invalid (file:line, rule)
    │   └── RequestError        a chat request is invalid (JSON path)
    └── InternalError           guardrail or its engine failed
        ├── ModelError          the model could not be prepared or loaded
        ├── GrammarError        the grammar engine failed on a valid spec
        └── AuditError          an audit record could not be written

Every message names the value that failed, where it is, and what to do.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "GrammarError",
    "GuardrailError",
    "InputError",
    "InternalError",
    "ModelError",
    "PolicyError",
    "RequestError",
]


class GuardrailError(Exception):
    """Base class of every error guardrail raises on purpose."""


class InputError(GuardrailError):
    """An input from the caller is invalid; nothing was generated."""


class PolicyError(InputError):
    """A policy file is invalid.

    ``source`` is the file name (or ``<string>``), ``line`` is 1-based and
    ``None`` when the error concerns the whole file.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "<string>",
        line: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.rule = rule
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.message}"


class RequestError(InputError):
    """A chat request (messages, tools, tool_choice) is invalid.

    ``path`` is a JSON path into the request body, such as
    ``$.tools[2].function.name``.
    """

    def __init__(self, message: str, *, path: str = "$") -> None:
        self.message = message
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InternalError(GuardrailError):
    """guardrail or the engine below it failed; the caller did nothing wrong."""


class ModelError(InternalError):
    """The model could not be prepared or loaded."""


class GrammarError(InternalError):
    """The grammar engine rejected a grammar that guardrail built."""


class AuditError(InternalError):
    """An audit record could not be written to its sink."""
