"""Test 2: over hundreds of windows with eviction, moves and sink/recent trimming, the engine's
KV cache and logits match a slow oracle that keeps pre-RoPE keys per token and rotates them at
their current contiguous positions before every forward (what the reference does at every step).
"""
import numpy as np
import pytest
import torch
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from conftest import random_frames
from svlm_ros.config import CachePolicy, EngineConfig
from svlm_ros.engine.frames import preprocess_frames
from svlm_ros.engine.segments import Kind
from svlm_ros.engine.session import StreamSession

TOLERANCE = 1e-4


class Oracle:
    """Stores each token's pre-RoPE key and value by serial; rotates everything every forward."""

    def __init__(self, loaded):
        self.model = loaded.model
        self.text = self.model.get_decoder()
        config = loaded.text_config
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.store = {}  # uid -> (keys (layers, heads, dim), values (layers, heads, dim))
        self._captured = {}
        for index, layer in enumerate(self.text.layers):
            layer.self_attn.k_proj.register_forward_hook(self._capture(index, "k"))
            layer.self_attn.v_proj.register_forward_hook(self._capture(index, "v"))

    def _capture(self, layer, which):
        def hook(module, inputs, output):
            if self.recording:
                self._captured[(layer, which)] = output[0].view(-1, self.kv_heads, self.head_dim).clone()
        return hook

    recording = False

    @staticmethod
    def positions(table):
        """Contiguous mRoPE positions written out plainly, segment by segment."""
        columns, position = [], 0
        for segment in table.segments:
            if segment.kind is Kind.VISION:
                grid_t, grid_h, grid_w = segment.grid
                columns.append((position, position, position))
                inner = position + 1
                for t in range(grid_t):
                    for h in range(grid_h):
                        for w in range(grid_w):
                            columns.append((inner + int(t * segment.time_step), inner + h, inner + w))
                columns.append((inner + max(grid_h, grid_w),) * 3)
                position = inner + max(grid_h, grid_w) + 1
            else:
                for _ in range(len(segment)):
                    columns.append((position,) * 3)
                    position += 1
        return torch.tensor(columns, dtype=torch.long).T

    def rotated(self, keys, positions):
        cos, sin = self.text.rotary_emb(keys, positions[:, None, :])
        rotated, _ = apply_rotary_pos_emb(keys.transpose(0, 1)[None], keys.transpose(0, 1)[None], cos, sin)
        return rotated[0]  # (heads, n, dim)

    def cache_for(self, uids, positions):
        cache = DynamicCache(config=self.model.config)
        for layer in range(len(self.text.layers)):
            keys = torch.stack([self.store[u][0][layer] for u in uids])  # (n, heads, dim)
            values = torch.stack([self.store[u][1][layer] for u in uids])
            cache.update(self.rotated(keys, positions)[None], values.transpose(0, 1)[None], layer)
        return cache

    def follow(self, table, video_features):
        """Catch up with the engine's table; returns the last token's logits."""
        uids = table.uids()
        tokens = torch.from_numpy(table.tokens())
        positions = self.positions(table)
        known = np.array([u in self.store for u in uids])
        new_from = int(np.argmin(known)) if not known.all() else len(uids)
        assert known[:new_from].all() and not known[new_from:].any(), "new tokens must be a suffix"
        for uid in list(self.store):
            if uid not in set(uids.tolist()):
                del self.store[uid]
        cache = self.cache_for(uids[:new_from], positions[:, :new_from]) if new_from else None
        new_tokens = tokens[new_from:]
        embeds = self.model.get_input_embeddings()(new_tokens)
        is_pad = new_tokens == self.video_pad
        if is_pad.any():
            embeds[is_pad] = video_features
        self.recording = True
        output = self.text(inputs_embeds=embeds[None], position_ids=positions[:, None, new_from:],
                           cache=cache, use_cache=True)
        self.recording = False
        layers = len(self.text.layers)
        for offset, uid in enumerate(uids[new_from:]):
            keys = torch.stack([self._captured[(layer, "k")][offset] for layer in range(layers)])
            values = torch.stack([self._captured[(layer, "v")][offset] for layer in range(layers)])
            self.store[int(uid)] = (keys, values)
        return self.model.get_output_embeddings()(output.last_hidden_state[0, -1])

    def check_cache(self, engine, table):
        uids = table.uids()
        positions = self.positions(table)
        assert np.array_equal(positions.numpy(), table.position_ids()), "engine positions are not contiguous"
        for layer, engine_layer in enumerate(engine.cache.layers):
            keys = torch.stack([self.store[u][0][layer] for u in uids])
            values = torch.stack([self.store[u][1][layer] for u in uids])
            expected_keys = self.rotated(keys, positions)
            key_error = (engine_layer.keys[0] - expected_keys).abs().max()
            value_error = (engine_layer.values[0] - values.transpose(0, 1)).abs().max()
            assert key_error <= TOLERANCE, f"layer {layer} keys differ by {key_error}"
            assert value_error <= TOLERANCE, f"layer {layer} values differ by {value_error}"


POLICIES = [
    CachePolicy(vision_windows=2, text_windows=3, sink_tokens=6, recent_tokens=10),
    CachePolicy(vision_windows=3, text_windows=1, sink_tokens=0, recent_tokens=7),
]


@pytest.mark.parametrize("decode_mode", ["dynamic", "static"])
@pytest.mark.parametrize("policy", POLICIES, ids=["text-outlives-vision", "vision-outlives-text"])
def test_engine_matches_rerotating_oracle(tiny_model, rng, policy, decode_mode):
    config = EngineConfig(cache=policy)
    config.generation.decode_mode = decode_mode
    config.generation.do_sample = False
    config.generation.max_new_tokens = 3
    config.generation.answer_max_new_tokens = 4
    config.prompt.context = "The robot is in the lab."
    session = StreamSession(tiny_model, config)
    oracle = Oracle(tiny_model)
    oracle.video_pad = session.prompt.special.video_pad
    moved = trimmed = 0
    with torch.inference_mode():
        for index in range(210):
            size = (56, 84) if index % 37 > 30 else (56, 56)  # resolution changes now and then
            frames = random_frames(rng, *size)
            session.step(frames, float(index), float(index + 1))
            vision = preprocess_frames(frames, config.frames.min_pixels, config.frames.max_pixels)
            features = session._vision_features(vision)
            if index % 23 == 5:  # a question mid-stream
                logits = oracle.follow(session.table, features)
                assert (logits - session.last_logits).abs().max() <= TOLERANCE
                session.ask("What changed?")
                features = None
            logits = oracle.follow(session.table, features)
            assert (logits - session.last_logits).abs().max() <= TOLERANCE, f"logits differ at window {index}"
            oracle.check_cache(session, session.table)
            prev_uids = np.concatenate([np.arange(seg.uid_start, seg.uid_start + len(seg))
                                        for seg in session.table.of_kind(Kind.PREV_TEXT)])
            if index == 0:
                context_uids = set(prev_uids.tolist())
            moved += bool(set(prev_uids.tolist()) - context_uids)
            trimmed += session.table.prev_text_length() == policy.sink_tokens + policy.recent_tokens
    assert moved > 150 and trimmed > 100, "the stream did not exercise moves and trimming"

