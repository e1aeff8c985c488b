"""Hot reload: validate first, keep the last good version, never mix versions."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from chat_requests import build_request
from structlog.testing import capture_logs

from guardrail.errors import PolicyError
from guardrail.policy.evaluate import evaluate_policy
from guardrail.policy.store import PolicyStore
from guardrail.session import session_from_request

TOOLS = {"search": None, "refund": None}


def version(name: str, allowed: str) -> str:
    return f"policy: {name}\ntools: {{{allowed}: {{allow: true}}}}\n"


def test_store_serves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(version("v1", "search"), encoding="utf-8")

    store = PolicyStore(path)

    assert store.current.name == "v1"
    assert store.refresh() is False


def test_store_rejects_an_invalid_first_version(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("policy: [\n", encoding="utf-8")

    with pytest.raises(PolicyError, match="invalid YAML"):
        PolicyStore(path)


def test_reload_swaps_a_valid_change(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(version("v1", "search"), encoding="utf-8")
    store = PolicyStore(path)
    old = store.current

    path.write_text(version("v2", "refund"), encoding="utf-8")
    with capture_logs() as logs:
        swapped = store.refresh()

    assert swapped is True
    assert store.current.name == "v2"
    assert old.name == "v1"
    assert old.compiled().rules[0].id == "tools.search"
    assert [entry["event"] for entry in logs] == ["policy_reloaded"]


def test_reload_keeps_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(version("v1", "search"), encoding="utf-8")
    store = PolicyStore(path)

    path.write_text(
        "policy: v2\nrules:\n  - {id: r, effect: permit, tools: [a], when: 'stp'}\n",
        encoding="utf-8",
    )
    with capture_logs() as logs:
        swapped = store.refresh()
        again = store.refresh()

    assert swapped is False
    assert again is False
    assert store.current.name == "v1"
    assert store.last_error is not None
    assert store.last_error.line == 3
    rejected = [entry for entry in logs if entry["event"] == "policy_reload_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["line"] == 3


def test_reload_follows_included_files(tmp_path: Path) -> None:
    fragment = tmp_path / "f.yaml"
    fragment.write_text("rules:\n  - {id: f, effect: forbid, tools: [search]}\n")
    path = tmp_path / "p.yaml"
    path.write_text("policy: p\ninclude: [f.yaml]\ntools: {search: {allow: true}}\n")
    store = PolicyStore(path)
    before = store.current.sha256

    fragment.write_text("rules:\n  - {id: f, effect: forbid, tools: [refund]}\n")

    assert store.refresh() is True
    assert store.current.sha256 != before


def test_reload_under_concurrent_use(tmp_path: Path) -> None:
    """Readers only ever see whole valid versions while a writer churns the file.

    Each valid version permits exactly the tool named in its policy name, so
    a reader can tell from one evaluation whether the version it holds is
    consistent. Invalid versions are written in between and must never be
    served.
    """
    path = tmp_path / "p.yaml"
    path.write_text(version("search", "search"), encoding="utf-8")
    store = PolicyStore(path, poll_interval=0.001).start()
    request = build_request(TOOLS)
    session = session_from_request(request)
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []

    def read() -> None:
        while not stop.is_set():
            policy = store.current
            allowed = evaluate_policy(policy, request, session).tool_names
            seen.add(policy.name)
            if allowed != (policy.name,):
                errors.append(f"{policy.name} allowed {allowed}")

    def write() -> None:
        for index in range(60):
            name = ("search", "refund")[index % 2]
            if index % 3 == 2:
                path.write_text("policy: broken\ntools: {a: {alow: 1}}\n")
            else:
                path.write_text(version(name, name), encoding="utf-8")
            time.sleep(0.005)
        stop.set()

    readers = [threading.Thread(target=read) for _ in range(4)]
    writer = threading.Thread(target=write)
    try:
        for thread in [*readers, writer]:
            thread.start()
        for thread in [writer, *readers]:
            thread.join(timeout=60)
    finally:
        stop.set()
        store.stop()

    assert errors == []
    assert "broken" not in seen
    assert seen == {"search", "refund"}
