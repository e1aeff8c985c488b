"""PolicyDirectory: loading a folder of policies and reloading it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guardrail.errors import PolicyError
from guardrail.proxy.policies import PolicyDirectory

OPEN = "policy: open\ndefault: allow\n"
CLOSED = "policy: open\ndefault: deny\n"


def touch_later(path: Path, text: str) -> None:
    """Write ``text`` and move the modification time forward."""
    path.write_text(text, encoding="utf-8")
    stat = path.stat()
    os.utime(path, (stat.st_atime + 5, stat.st_mtime + 5))


def test_loads_policies_by_name(tmp_path):
    (tmp_path / "a.yaml").write_text(OPEN)
    (tmp_path / "b.yml").write_text("policy: other\n")
    (tmp_path / "fragments").mkdir()
    (tmp_path / "fragments" / "part.yaml").write_text("not: a policy\n")

    directory = PolicyDirectory(tmp_path)

    assert directory.names() == ["open", "other"]
    assert directory.get("open").default == "allow"
    assert directory.versions()["open"]["sha256"] == directory.get("open").sha256


def test_reload_applies_changed_file(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text(OPEN)
    directory = PolicyDirectory(tmp_path)
    old_sha = directory.get("open").sha256

    touch_later(path, CLOSED)
    result = directory.reload()

    assert result.changed is True
    assert result.errors == ()
    assert directory.get("open").default == "deny"
    assert directory.get("open").sha256 != old_sha


def test_reload_rejects_bad_version(tmp_path):
    """A broken edit is reported once and the last good version keeps serving."""
    path = tmp_path / "open.yaml"
    path.write_text(OPEN)
    directory = PolicyDirectory(tmp_path)

    touch_later(path, "policy: open\ndefault: maybe\n")
    first = directory.reload()
    second = directory.reload()

    assert first.changed is False
    assert len(first.errors) == 1
    assert "default" in str(first.errors[0])
    assert second.errors == ()
    assert directory.get("open").default == "allow"


def test_new_and_removed_files(tmp_path):
    (tmp_path / "open.yaml").write_text(OPEN)
    directory = PolicyDirectory(tmp_path)

    (tmp_path / "extra.yaml").write_text("policy: extra\n")
    added = directory.reload()
    (tmp_path / "extra.yaml").unlink()
    removed = directory.reload()

    assert added.changed is True
    assert removed.changed is True
    assert directory.names() == ["open"]


def test_duplicate_names_rejected_at_start(tmp_path):
    (tmp_path / "a.yaml").write_text(OPEN)
    (tmp_path / "b.yaml").write_text(CLOSED)

    with pytest.raises(PolicyError, match="'open' is also declared in"):
        PolicyDirectory(tmp_path)


def test_invalid_file_rejected_at_start(tmp_path):
    (tmp_path / "a.yaml").write_text("policy: open\ndefalt: deny\n")

    with pytest.raises(PolicyError, match=r"a\.yaml:2"):
        PolicyDirectory(tmp_path)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(PolicyError, match="no policy files"):
        PolicyDirectory(tmp_path)
    with pytest.raises(PolicyError, match="policy folder not found"):
        PolicyDirectory(tmp_path / "absent")
