"""Shared pytest setup: tests are CPU-only and never touch the real user cache."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, tmp_path, monkeypatch):
    """Point the data/tokenizer cache at one temp folder shared by the session (a test may override it)."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    # the fake trainer's test channels (fake_control.json, grandchild.pid) live in the workspace under
    # tmp_path; a real trainer gets no such grant (tests/test_integrity_attacks.py removes it)
    monkeypatch.setenv("AUTORESEARCH_TRAINER_RW", str(tmp_path))
