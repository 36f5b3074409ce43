"""Shared fixtures. Feature areas keep their own fixtures in their folder's conftest.py."""

from __future__ import annotations

pytest_plugins = ["tests.pg"]
