"""Shared fixtures: a real tiny-profile cache, prepared once per test session."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prepare  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """AUTORESEARCH_CACHE pointing at a freshly prepared tiny profile (generated corpus, real
    BPE, real parquet shards). Yields the cache root."""
    root = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("AUTORESEARCH_CACHE")
    os.environ["AUTORESEARCH_CACHE"] = str(root)
    try:
        assert prepare.main(["--tiny", "--workers", "2"]) == 0
        yield root
    finally:
        if saved is None:
            os.environ.pop("AUTORESEARCH_CACHE", None)
        else:
            os.environ["AUTORESEARCH_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_profile(tiny_cache):
    return prepare.get_profile("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_profile):
    return prepare.Tokenizer.from_directory(tiny_profile)
