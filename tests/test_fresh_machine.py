"""The default suite runs as on a fresh machine: no cached model is visible to it (tests/conftest.py)."""

import os
from pathlib import Path

import pytest

import tuneforge


def test_the_default_suite_sees_an_empty_model_cache():
    cache = Path(os.environ["TUNEFORGE_CACHE"])
    assert "tuneforge-empty-cache-" in str(cache), "conftest.py must point TUNEFORGE_CACHE at a private folder"
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    assert "TUNEFORGE_SMOLLM2_GGUF" not in os.environ
    assert os.environ["HF_HUB_OFFLINE"] == "1" and "tuneforge-empty-cache-" in os.environ["HF_HOME"]


def test_the_demo_experiment_cannot_reach_a_developers_cached_model():
    """Without the placeholder fixture, composing the demo is refused: its GGUF is not in the empty cache."""
    from tuneforge.host.compose import compose, load_plugins

    with pytest.raises(tuneforge.ConfigError, match=r"^model\.path: GGUF file not found: .*tuneforge-empty-cache-"):
        compose(["+experiment=legal_citations"], load_plugins(["+experiment=legal_citations"]))
