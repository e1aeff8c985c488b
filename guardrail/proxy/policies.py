"""The policies a proxy serves: every ``*.yaml`` / ``*.yml`` file of a folder.

Each top-level file is one :class:`~guardrail.policy.store.PolicyStore`, so a
change to a file or to a fragment it includes is reloaded, and a version
that fails to load is rejected while the last good one keeps serving.
Subfolders (fragments, policy tests) are not policies and are not scanned.
Policies are indexed by their ``policy:`` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import structlog

from guardrail.errors import PolicyError
from guardrail.policy.model import Policy
from guardrail.policy.store import PolicyStore

__all__ = ["PolicyDirectory", "ReloadResult"]

log = structlog.get_logger("guardrail.proxy")


@dataclass(frozen=True)
class ReloadResult:
    changed: bool
    errors: tuple[PolicyError, ...] = ()


class PolicyDirectory:
    """Policies loaded from ``folder``, by name.

    Raises :class:`PolicyError` at construction when the folder contains no
    valid policy, any file is invalid, or two files declare the same name:
    a proxy must not start with part of its policies.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PolicyError(
                "policy folder not found: pass --policy-dir with the folder "
                "that contains the policy YAML files",
                source=str(self.folder),
            )
        self._lock = Lock()
        self._stores: dict[Path, PolicyStore] = {}
        self._failed: dict[Path, str] = {}
        self._by_name: dict[str, Policy] = {}

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
        """Load new files and refresh known ones; return what changed.

        ``errors`` lists each version rejected by this call. A file whose
        content already failed is not reported again until it changes.
        """
        files = sorted(
            path
            for pattern in ("*.yaml", "*.yml")
            for path in self.folder.glob(pattern)
            if path.is_file()
        )
        errors: list[PolicyError] = []

        for path in set(self._stores) - set(files):
            del self._stores[path]
        for path in files:
            store = self._stores.get(path)
            if store is None:
                error = self._open_store(path)
                if error is not None:
                    errors.append(error)
                continue
            previous_error = store.last_error
            store.refresh()
            if store.last_error is not None and store.last_error is not previous_error:
                errors.append(store.last_error)

        by_name: dict[str, Policy] = {}
        for path, store in self._stores.items():
            policy = store.current
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
            before = {n: p.sha256 for n, p in self._by_name.items()}
            self._by_name = by_name
        after = {n: p.sha256 for n, p in by_name.items()}
        if after != before:
            log.info("policies_loaded", policies={n: s[:12] for n, s in after.items()})

        return ReloadResult(changed=after != before, errors=tuple(errors))

    def _open_store(self, path: Path) -> PolicyError | None:
        """Start serving a new file; return its error, once per content."""
        try:
            content = path.read_bytes().hex()
        except OSError as err:
            content = str(err)
        if self._failed.get(path) == content:
            return None
        try:
            self._stores[path] = PolicyStore(path)
        except PolicyError as err:
            self._failed[path] = content
            log.error("policy_reload_rejected", error=str(err), file=str(path))
            return err
        self._failed.pop(path, None)
        return None
