"""The curated public API in ``guardrail.__init__``."""

from __future__ import annotations

import subprocess
import sys

import guardrail


def test_all_names_are_importable():
    for name in guardrail.__all__:
        assert hasattr(guardrail, name), name


def test_all_is_sorted_and_unique():
    assert list(guardrail.__all__) == sorted(set(guardrail.__all__))


def test_import_loads_no_heavy_library():
    code = (
        "import sys, guardrail, guardrail.cli.main; "
        "heavy = ('torch', 'transformers', 'vllm'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
