import os
import tempfile

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis draws the same examples on every run (derandomize): a failure found in CI is found
# again on a developer's machine, and a run never passes or fails by luck. The `explore` profile
# (HYPOTHESIS_PROFILE=explore) searches with fresh random examples and more of them.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DDS discovery stays on this machine, in a domain of its own for this test run.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 50))
# The node's long-term memory defaults to $ROS_HOME/svlm/memory.sqlite: tests never write to the
# user's ~/.ros (node subprocesses inherit this).
os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="svlm-test-ros-home-")


@pytest.fixture(scope="session")
def tiny_model():
    from svlm_ros.config import ModelConfig
    from svlm_ros.engine.models import load_model

    return load_model(ModelConfig(model="tiny-random", device="cpu", dtype="float32"))


def random_frames(rng, height=56, width=56, count=2):
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_qwen2_vl():
    """A random-weight Qwen2-VL (the older architecture StreamingVLM's positions also fit)."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from svlm_ros.engine.frames import Normalization
    from svlm_ros.engine.models import LoadedModel, _vision_token_ids, qwen_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer),
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
        **_vision_token_ids(tokenizer))
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return LoadedModel(model, tokenizer, "tiny-qwen2-vl", Normalization())
