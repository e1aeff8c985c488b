"""Fixtures of the policy tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from chat_requests import build_request

from guardrail.request import ChatRequest


@pytest.fixture
def make_request() -> Callable[..., ChatRequest]:
    return build_request
