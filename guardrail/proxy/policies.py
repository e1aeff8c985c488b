"""The policies a proxy serves: every ``*.yaml`` / ``*.yml`` file of a folder.

Policies are indexed by their ``policy:`` name. :meth:`PolicyDirectory.reload`
reads the folder again when a file changed (by modification time and size);
a file that fails to load keeps its last good version serving and the error
is logged and returned, so a bad push never leaves a request unguarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import structlog

from guardrail.errors import PolicyError
from guardrail.policy.loader import load_policy
from guardrail.policy.model import Policy

__all__ = ["PolicyDirectory", "ReloadResult"]

log = structlog.get_logger("guardrail.proxy")


@dataclass(frozen=True)
class ReloadResult:
    changed: bool
    errors: tuple[PolicyError, ...] = ()


class PolicyDirectory:
    """Policies loaded from ``folder``, by name.

    Raises :class:`PolicyError` at construction when the folder holds no
    valid policy, any file is invalid, or two files declare the same name:
    a proxy must not start with part of its policies.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PolicyError(
                "policy folder not found: pass --policy-dir with the folder "
                "that holds the policy YAML files",
                source=str(self.folder),
            )
        self._lock = Lock()
        self._by_name: dict[str, Policy] = {}
        self._by_file: dict[Path, Policy] = {}
        self._stamps: dict[Path, tuple[float, int]] = {}

        result = self.reload()
        if result.errors:
            raise result.errors[0]
        if not self._by_name:
            raise PolicyError(
                "no policy files (*.yaml, *.yml) in the policy folder",
                source=str(self.folder),
            )

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)

    def get(self, name: str) -> Policy | None:
        with self._lock:
            return self._by_name.get(name)

    def versions(self) -> dict[str, dict[str, str]]:
        """Return ``{name: {"sha256": ..., "source": ...}}`` for every policy."""
        with self._lock:
            return {
                name: {"sha256": policy.sha256, "source": policy.source}
                for name, policy in sorted(self._by_name.items())
            }

    def reload(self) -> ReloadResult:
        """Load new and changed files; keep the last good version on errors."""
        files = sorted(
            path
            for pattern in ("*.yaml", "*.yml")
            for path in self.folder.glob(pattern)
            if path.is_file()
        )
        stamps = {path: _stamp(path) for path in files}
        if stamps == self._stamps:
            return ReloadResult(changed=False)

        errors: list[PolicyError] = []
        by_file: dict[Path, Policy] = {}
        for path in files:
            previous = self._by_file.get(path)
            if previous is not None and self._stamps.get(path) == stamps[path]:
                by_file[path] = previous
                continue
            try:
                by_file[path] = load_policy(path)
            except PolicyError as err:
                errors.append(err)
                log.error("policy_reload_rejected", error=str(err), file=str(path))
                if previous is not None:
                    by_file[path] = previous

        by_name: dict[str, Policy] = {}
        for path, policy in by_file.items():
            other = by_name.get(policy.name)
            if other is not None:
                errors.append(
                    PolicyError(
                        f"policy name {policy.name!r} is also declared in "
                        f"{other.source}: give each policy file a unique name",
                        source=str(path),
                        line=policy.line_of("policy"),
                    )
                )
                continue
            by_name[policy.name] = policy

        with self._lock:
            changed = {n: p.sha256 for n, p in by_name.items()} != {
                n: p.sha256 for n, p in self._by_name.items()
            }
            self._by_name = by_name
            self._by_file = by_file
            self._stamps = stamps
        if changed:
            log.info("policies_loaded", policies=self.versions_unlocked(by_name))

        return ReloadResult(changed=changed, errors=tuple(errors))

    @staticmethod
    def versions_unlocked(by_name: dict[str, Policy]) -> dict[str, str]:
        return {name: policy.sha256[:12] for name, policy in sorted(by_name.items())}


def _stamp(path: Path) -> tuple[float, int]:
    stat = path.stat()
    return (stat.st_mtime, stat.st_size)
