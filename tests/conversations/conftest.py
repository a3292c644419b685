"""Fixtures of the conversation tests: the official `openai` SDK pointed at the live service."""

from __future__ import annotations

import openai
import pytest

from accounts.services import api_key_create


@pytest.fixture
def key(user) -> str:
    return api_key_create(user=user, name="sdk")[1]


@pytest.fixture
def sdk(live_url, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_url}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def other_sdk(live_url, other_user) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_url}/v1", api_key=api_key_create(user=other_user)[1], max_retries=0)
