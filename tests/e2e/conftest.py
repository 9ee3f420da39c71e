"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest
from e2e_helpers import make_repo_copy


@pytest.fixture
def repo_copy(tmp_path):
    """A throw-away git copy of the repository (tracked files only) under the smoke profile:
    ``(path, env)``."""
    return make_repo_copy(tmp_path)
