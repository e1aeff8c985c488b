"""Proxy configuration from YAML, TOML, environment and options."""

from __future__ import annotations

import re

import pytest

from guardrail.proxy.config import ConfigError, load_config

YAML_TEXT = """\
policy_dir: policies
upstream: http://127.0.0.1:8000/v1
port: 9000
bindings:
  - policy: support-agent
    api_keys: [sk-one]
"""

TOML_TEXT = """\
policy_dir = "policies"
embedded = true

[[bindings]]
policy = "support-agent"
models = ["support-agent"]
"""


def test_yaml_file_read(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(YAML_TEXT)

    config = load_config(path, environ={})

    assert config.upstream_url == "http://127.0.0.1:8000/v1"
    assert config.port == 9000
    assert config.bindings[0].api_keys == ["sk-one"]


def test_toml_file_read(tmp_path):
    path = tmp_path / "proxy.toml"
    path.write_text(TOML_TEXT)

    config = load_config(path, environ={})

    assert config.embedded is True
    assert config.bindings[0].models == ["support-agent"]


def test_environment_then_options_win(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(YAML_TEXT)
    environ = {"GUARDRAIL_PROXY_PORT": "9100", "GUARDRAIL_PROXY_MAX_TOOLS": "500"}

    from_env = load_config(path, environ=environ)
    from_option = load_config(path, environ=environ, overrides={"port": 9200})

    assert from_env.port == 9100
    assert from_env.max_tools == 500
    assert from_option.port == 9200


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "no engine configured"),
        (
            {"upstream": "http://127.0.0.1:1/v1", "embedded": True},
            "both 'upstream' and 'embedded'",
        ),
        ({"upstream": "127.0.0.1:8000"}, "not an http"),
        (
            {"embedded": True, "bindings": [{"policy": "x"}]},
            "selects no request",
        ),
        ({"embedded": True, "prot": 1}, "at prot"),
    ],
)
def test_invalid_settings_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, environ={}, overrides=settings)


def test_unknown_file_format(tmp_path):
    path = tmp_path / "proxy.ini"
    path.write_text("[x]\n")

    with pytest.raises(ConfigError, match=re.escape("use a .yaml, .yml or .toml file")):
        load_config(path, environ={})


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text("bindings: [\n")

    with pytest.raises(
        ConfigError, match=re.escape("proxy.yaml: invalid configuration")
    ):
        load_config(path, environ={})
