"""Test 6: a checkpoint saved with save_pretrained loads by path and streams; bad models are refused."""
import json
import uuid

import numpy as np
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


def test_the_narrators_patch_embedding_sees_motion_and_form_apart_from_colour():
    """narrator-random's structured stem (engine.models.PatchStem): its motion filters are zero (but for rounding)
    where the second's two frames agree and not where a shape moved; its form filters give one shape nearly the
    same output in red as in green (equal channel sums), its colour filters do not."""
    from svlm_ros.engine.frames import preprocess_frames
    from svlm_ros.engine.models import random_stem
    from svlm_ros.replay.synth import Scene

    loaded = load_model(ModelConfig(model="narrator-random", device="cpu", dtype="float32"))
    patch_embedding = loaded.model.model.visual.patch_embed
    stem = random_stem("narrator-random")
    filters = patch_embedding.proj.weight.shape[0]
    motion = stem.motion_filters(filters)
    form = slice(0, motion.start)

    def embed(frames):
        patches = preprocess_frames(frames, 4704, 4704, loaded.normalization).pixel_values
        with torch.no_grad():
            return patch_embedding(torch.from_numpy(patches))

    scene = Scene(30, seed=3, max_objects=1, shape_size=56)
    moving = next(s for s in range(30) if scene.keyframes[s] and scene.keyframes[s][0].speed != 0)
    still = embed([scene.frame(moving, 112, 168)] * 2)
    moved = embed([scene.frame(moving, 112, 168), scene.frame(moving + 0.5, 112, 168)])
    assert still[:, motion].abs().max() < 1e-3 * moved[:, motion].abs().max()  # zero but for rounding
    assert moved[:, motion].abs().max() > 2 * moved[:, form].abs().mean()  # a 2-px sliver, as loud as form

    square = np.zeros((112, 168, 3), np.uint8)
    red, green = square.copy(), square.copy()
    red[30:80, 50:100] = (200, 50, 50)
    green[30:80, 50:100] = (50, 200, 50)
    red_out, green_out = embed([red, red]), embed([green, green])

    def apart(filters):  # how far red is from green, against the output's size
        return float((red_out[:, filters] - green_out[:, filters]).norm() / red_out[:, filters].norm())

    # Form filters sum the normalized channels, whose CLIP scales differ by a few per cent.
    assert apart(form) < 0.05 and apart(slice(motion.stop, filters)) > 0.2


def test_random_models_without_a_stem_are_unchanged():
    """tiny-random keeps the plain random patch embedding (its streams are what the engine tests pin)."""
    from svlm_ros.engine.models import random_stem

    assert random_stem("tiny-random") is None and random_stem("narrator-random") is not None
