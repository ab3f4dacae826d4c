"""Shared pytest setup: tests are CPU-only and never touch the real user cache."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Point the data/tokenizer cache at a per-session temp folder unless a test sets its own."""
    if "AUTORESEARCH_CACHE" not in os.environ or os.environ.get("AUTORESEARCH_TEST_OWN_CACHE") != "1":
        monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
