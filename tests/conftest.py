"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio unless a test asks for another backend."""
    return "asyncio"
