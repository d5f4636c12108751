"""Test 1: with every limit unlimited, streaming step by step equals one full forward pass.

The full pass lets transformers compute the mRoPE positions itself (get_rope_index), so this
also checks that the engine's positions are the model's own.
"""
import numpy as np
import pytest
import torch

from conftest import random_frames
from svlm_ros.config import CachePolicy, EngineConfig
from svlm_ros.engine.frames import preprocess_frames
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_qwen2_vl"])
def test_stepwise_equals_full_forward(model_fixture, request, rng):
    tiny_model = request.getfixturevalue(model_fixture)
    config = EngineConfig(cache=CachePolicy.unlimited())
    config.generation.do_sample = False
    config.generation.max_new_tokens = 5
    config.prompt.context = "Earlier: a robot arm picked up a red cube."
    session = StreamSession(tiny_model, config)
    windows = []
    sizes = [(56, 56), (56, 56), (84, 56), (56, 112), (56, 56)]  # includes resolution changes
    for index, (height, width) in enumerate(sizes):
        frames = random_frames(rng, height, width)
        windows.append(preprocess_frames(frames, config.frames.min_pixels, config.frames.max_pixels))
        session.step(frames, float(index), float(index + 1))
    session.table.check()

    tokens = torch.from_numpy(session.table.tokens())[None]
    video_pad = session.prompt.special.video_pad
    token_types = (tokens == video_pad).int() * 2  # 0 text, 2 video
    pixels = torch.from_numpy(np.concatenate([w.pixel_values for w in windows]))
    grids = torch.tensor([w.grid_thw for w in windows])
    timing = {"second_per_grid_ts": torch.ones(len(windows))} if tiny_model.model.config.model_type == "qwen2_5_vl" else {}
    with torch.inference_mode():
        full = tiny_model.model(
            input_ids=tokens, pixel_values_videos=pixels, video_grid_thw=grids,
            mm_token_type_ids=token_types, use_cache=True, **timing,
        )
    # The engine's last forward fed the final turn's closing tokens; its logits are the last row.
    assert torch.allclose(session.last_logits, full.logits[0, -1], atol=1e-4), \
        (session.last_logits - full.logits[0, -1]).abs().max()
    layers = zip(session.cache.layers, full.cache.layers, strict=True)
    for layer, (engine_layer, full_layer) in enumerate(layers):
        assert torch.allclose(engine_layer.keys, full_layer.keys, atol=1e-4), f"keys differ in layer {layer}"
        assert torch.allclose(engine_layer.values, full_layer.values, atol=1e-4), f"values differ in layer {layer}"
    # And the positions transformers computed are the table's.
    hf_positions, _ = tiny_model.model.model.get_rope_index(tokens, token_types, video_grid_thw=grids, **timing)
    assert np.array_equal(hf_positions[:, 0].numpy(), session.table.position_ids())
    assert sum(1 for _ in session.table.of_kind(Kind.VISION)) == len(sizes)
