"""Proxy configuration: a YAML or TOML file, then environment variables.

A configuration file reads::

    policy_dir: policies
    upstream: http://127.0.0.1:8000/v1   # or embedded: true
    bindings:
      - policy: support-agent
        api_keys: [sk-support-team]
        header_values: [support]         # X-Guardrail-Policy: support
        models: [support-agent]

Every scalar field can also be set as ``GUARDRAIL_PROXY_<FIELD>`` in the
environment (``GUARDRAIL_PROXY_UPSTREAM``); the environment wins over the
file, and command-line options win over both. Bindings come from the file
only, because a list of secrets does not fit one variable.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from guardrail.errors import InputError

__all__ = ["ENV_PREFIX", "Binding", "ConfigError", "ProxyConfig", "load_config"]

ENV_PREFIX = "GUARDRAIL_PROXY_"


class ConfigError(InputError):
    """The proxy configuration (file, environment or options) is invalid."""


class Binding(BaseModel):
    """The selectors of the requests one policy governs.

    A request is bound by its API key (``Authorization: Bearer ...``), by
    the value of the binding header, or by its ``model`` field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(min_length=1)
    api_keys: list[str] = Field(default_factory=list)
    header_values: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_selects_something(self) -> Binding:
        if not (self.api_keys or self.header_values or self.models):
            raise ValueError(
                f"binding for policy {self.policy!r} selects no request: give "
                "api_keys, header_values or models"
            )
        return self


class ProxyConfig(BaseModel):
    """Settings of one proxy process.

    ``upstream`` is the base URL of an OpenAI-compatible server (vLLM) that
    has guardrail's logits processor loaded; ``embedded`` runs the model
    in-process instead. Exactly one of the two must be set. ``model_dir`` is
    the Hugging Face checkpoint whose tokenizer renders prompts (upstream
    mode: it must be the upstream's model) and whose weights run in
    embedded mode; the default is the prepared SmolLM2-135M-Instruct.
    """

    model_config = ConfigDict(extra="forbid")

    policy_dir: Path = Path("policies")
    upstream: str | None = None
    upstream_api: Literal["completions", "chat"] = "completions"
    upstream_model: str | None = None
    embedded: bool = False
    model_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    audit_log: Path | None = None
    binding_header: str = "X-Guardrail-Policy"
    bindings: list[Binding] = Field(default_factory=list)
    upstream_timeout_s: float = Field(default=120.0, gt=0)
    probe_interval_s: float = Field(default=30.0, ge=0)
    policy_reload_interval_s: float = Field(default=2.0, ge=0)
    max_tools: int = Field(default=128, ge=1)
    max_body_bytes: int = Field(default=4_000_000, ge=1024)
    max_tokens_limit: int = Field(default=4096, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    alert_threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_one_engine(self) -> ProxyConfig:
        if self.embedded and self.upstream:
            raise ValueError(
                "both 'upstream' and 'embedded' are set: choose one, an "
                "upstream URL or the in-process model"
            )
        if not self.embedded and not self.upstream:
            raise ValueError(
                "no engine configured: set 'upstream' to a vLLM base URL "
                "(http://127.0.0.1:8000/v1) or 'embedded: true'"
            )
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise ValueError(
                f"upstream {self.upstream!r} is not an http(s) URL: give the "
                "base URL, such as http://127.0.0.1:8000/v1"
            )
        return self

    @property
    def upstream_url(self) -> str:
        return (self.upstream or "").rstrip("/")


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ProxyConfig:
    """Build the configuration from a file, the environment and overrides.

    ``overrides`` (command-line options) win over the environment, which
    wins over the file. Entries of ``overrides`` that are ``None`` are
    ignored. Raises :class:`ConfigError` naming the file or variable.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data.update(_read_file(Path(path)))
        source = str(path)

    env = os.environ if environ is None else environ
    for name in ProxyConfig.model_fields:
        variable = ENV_PREFIX + name.upper()
        if name != "bindings" and variable in env:
            data[name] = env[variable]
            source = f"{source} + environment"

    data.update({k: v for k, v in (overrides or {}).items() if v is not None})

    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(
            f"invalid proxy configuration ({source}) at {where}: {first['msg']}"
        ) from err


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read proxy configuration {path}: {err}") from err

    try:
        if path.suffix == ".toml":
            document: Any = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            document = YAML(typ="safe").load(text)
        else:
            raise ConfigError(
                f"unknown configuration format {path.suffix!r} for {path}: use a "
                ".yaml, .yml or .toml file"
            )
    except (tomllib.TOMLDecodeError, YAMLError) as err:
        raise ConfigError(f"{path}: invalid configuration file: {err}") from err

    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: the configuration must be a mapping of settings, got "
            f"{type(document).__name__}"
        )
    # Round-trip through JSON so ruamel/tomllib types become plain values.
    return dict(json.loads(json.dumps(document, default=str)))
