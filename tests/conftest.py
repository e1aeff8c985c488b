"""Shared fixtures: the real default model and tokenizer, prepared once.

The model folder is ``$GUARDRAIL_HOME/models/SmolLM2-135M-Instruct``; the
Makefile sets ``GUARDRAIL_HOME`` to ``.cache/guardrail`` in the repository
and runs ``guardrail model prepare`` before pytest. A test session started
without it prepares the model on first use (about 30 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("GUARDRAIL_HOME", str(REPO / ".cache" / "guardrail"))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from guardrail.models.prepare import default_model_dir, prepare_default_model

    return prepare_default_model(default_model_dir())


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="session")
def backend(model_dir: Path):
    from guardrail.backends.transformers import TransformersBackend

    return TransformersBackend(model_dir)


@pytest.fixture
def policies_dir() -> Path:
    return REPO / "policies"


@pytest.fixture
def examples_dir() -> Path:
    return REPO / "examples"


@pytest.fixture(autouse=True)
def _reset_structlog():
    """Give every test structlog's defaults; CLI commands configure it globally."""
    import structlog

    yield
    structlog.reset_defaults()
