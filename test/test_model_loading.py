"""Test 6: a checkpoint saved with save_pretrained loads by path and streams; bad models are refused."""
import json
import uuid

import pytest
import torch

from conftest import random_frames
from svlm_ros.config import EngineConfig, ModelConfig
from svlm_ros.engine.models import load_model
from svlm_ros.engine.session import StreamSession


def test_saved_checkpoint_loads_by_path_and_streams(tiny_model, tmp_path, rng):
    tiny_model.model.save_pretrained(tmp_path)
    tiny_model.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
        "min_pixels": 3136, "max_pixels": 100352}))
    loaded = load_model(ModelConfig(model=str(tmp_path), device="cpu", dtype="float32"))
    assert type(loaded.model) is type(tiny_model.model)
    pairs = zip(tiny_model.model.state_dict().items(), loaded.model.state_dict().values(), strict=True)
    for (name, saved), restored in pairs:
        assert torch.equal(saved, restored), name
    assert loaded.normalization.mean == (0.5, 0.5, 0.5) and loaded.max_pixels == 100352
    session = StreamSession(loaded, EngineConfig())
    result = session.step(random_frames(rng), 0.0, 1.0)
    assert result.generated_tokens > 0 and result.cache_tokens == session.table.length


def test_missing_hub_model_says_how_to_get_it():
    # huggingface_hub reads HF_HOME once, at import, so setting it here would not isolate the
    # cache; an id that no cache can hold makes the outcome independent of the machine instead.
    missing = f"svlm-tests/no-such-model-{uuid.uuid4().hex}"
    with pytest.raises(FileNotFoundError, match=f"huggingface-cli download {missing}"):
        load_model(ModelConfig(model=missing, device="cpu"))


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    with pytest.raises(ValueError, match="qwen3_vl.*not supported"):
        load_model(ModelConfig(model=str(tmp_path), device="cpu"))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(ModelConfig(model=str(tmp_path), device="cpu"))
