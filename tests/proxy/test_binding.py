"""BindingTable: API key, header and model selectors, failing closed."""

from __future__ import annotations

import pytest

from guardrail.proxy.binding import BindingTable
from guardrail.proxy.config import Binding
from guardrail.proxy.errors import ProxyError

HEADER = "X-Guardrail-Policy"


@pytest.fixture
def table() -> BindingTable:
    bindings = [
        Binding(policy="support", api_keys=["sk-a"], models=["support-bot"]),
        Binding(policy="read-only", header_values=["ro"], models=["viewer"]),
    ]
    return BindingTable(bindings, HEADER, ["support", "read-only"])


def test_each_selector_binds(table):
    assert table.resolve("sk-a", None, None).policy == "support"
    assert table.resolve(None, "ro", None).selector == "header"
    assert table.resolve("sk-unlisted", None, "viewer").policy == "read-only"


def test_unbound_request_rejected(table):
    with pytest.raises(ProxyError, match="no guardrail policy is bound") as info:
        table.resolve("sk-unlisted", None, "gpt-4o")

    assert info.value.status == 403
    assert info.value.code == "unbound_request"


def test_conflicting_selectors_rejected(table):
    with pytest.raises(ProxyError, match="the api_key selects 'support'") as info:
        table.resolve("sk-a", None, "viewer")

    assert info.value.code == "conflicting_binding"


def test_unknown_header_value_rejected(table):
    with pytest.raises(ProxyError, match="'admin' selects no policy") as info:
        table.resolve(None, "admin", None)

    assert info.value.status == 400


def test_default_binds_policy_names():
    table = BindingTable([], HEADER, ["support", "read-only"])

    assert table.by_default is True
    assert table.model_names == ["read-only", "support"]
    assert table.resolve(None, None, "support").policy == "support"
