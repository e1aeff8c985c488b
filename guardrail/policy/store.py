"""Hot reload of one policy file, keeping the last good version on errors.

:class:`PolicyStore` serves the current :class:`Policy`. :meth:`refresh`,
called by the background watcher or by hand, reads the file and every file
it includes. When their bytes changed, the new version is fully loaded and
compiled before it replaces the old one. A version that fails
is rejected, logged as ``policy_reload_rejected`` with file:line, and the
last good version keeps serving. A failure is logged once per distinct
content, not at every poll.

Policies are immutable, so a request that took :attr:`current` at its start
keeps that exact version (and its sha256 in the audit) until it finishes,
whatever reloads happen meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from guardrail.errors import PolicyError
from guardrail.policy.loader import load_policy
from guardrail.policy.model import Policy

__all__ = ["PolicyStore"]

log = structlog.get_logger("guardrail.policy")


class PolicyStore:
    """The current version of one policy file, reloaded when it changes.

    Raises :class:`PolicyError` at construction when the file is invalid:
    with no good version yet, there is nothing safe to serve. ``on_change``
    is called with the new policy after each successful reload, on the
    thread that reloaded.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        poll_interval: float = 1.0,
        on_change: Callable[[Policy], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._on_change = on_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self._policy = load_policy(self.path)
        self._fingerprint = self._read_fingerprint(self._policy)
        self._rejected: str | None = None
        self.last_error: PolicyError | None = None
        self.version = 1
        log.info(
            "policy_loaded",
            policy=self._policy.name,
            policy_sha256=self._policy.sha256,
            source=str(self.path),
        )

    @property
    def current(self) -> Policy:
        """The policy to use for a request that starts now."""
        with self._lock:
            return self._policy

    def refresh(self) -> bool:
        """Reload when the files changed; return True if a new version is served."""
        with self._lock:
            policy = self._policy
        fingerprint = self._read_fingerprint(policy)
        if fingerprint == self._fingerprint or fingerprint == self._rejected:
            return False

        try:
            loaded = load_policy(self.path)
        except PolicyError as err:
            self._rejected = fingerprint
            self.last_error = err
            log.error(
                "policy_reload_rejected",
                policy=policy.name,
                serving_sha256=policy.sha256,
                source=err.source,
                line=err.line,
                error=err.message,
            )
            return False

        with self._lock:
            previous = self._policy
            self._policy = loaded
            self._fingerprint = self._read_fingerprint(loaded)
            self._rejected = None
            self.last_error = None
            self.version += 1
        log.info(
            "policy_reloaded",
            policy=loaded.name,
            policy_sha256=loaded.sha256,
            previous_sha256=previous.sha256,
            version=self.version,
        )
        if self._on_change is not None:
            self._on_change(loaded)
        return True

    def start(self) -> PolicyStore:
        """Start polling in a daemon thread; return ``self``."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._watch, name="guardrail-policy-store", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the polling thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PolicyStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception as err:  # the watcher must outlive any one failure
                log.error("policy_watch_failed", source=str(self.path), error=str(err))

    def _read_fingerprint(self, policy: Policy) -> str:
        """Digest the bytes of the file and of the files ``policy`` includes.

        A new include only counts once the top file that names it changed,
        and that change is seen here because the top file is always read.
        A file that cannot be read contributes its error text, so deleting
        it is a change that leads to a (rejected) reload.
        """
        digest = hashlib.sha256()
        files = [str(self.path), *(f.source for f in policy.fragments)]
        for name in files:
            try:
                digest.update(Path(name).read_bytes())
            except OSError as err:
                digest.update(f"unreadable: {err.strerror}".encode())
            digest.update(b"\0")
        return digest.hexdigest()
