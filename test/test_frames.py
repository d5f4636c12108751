"""Frame preprocessing matches transformers' Qwen2-VL image processor."""
import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from svlm_ros.engine.frames import preprocess_frames, target_size


def test_patches_match_the_qwen_processor(rng):
    frame = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)
    ours = preprocess_frames([frame, frame], min_pixels=56 * 56, max_pixels=200 * 200)
    theirs = Qwen2VLImageProcessorPil()(images=[frame], return_tensors="np",
                                        min_pixels=56 * 56, max_pixels=200 * 200)
    assert ours.grid_thw == tuple(theirs["image_grid_thw"][0])
    assert np.allclose(ours.pixel_values, theirs["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("height,width", [(480, 640), (720, 1280), (1080, 1920), (50, 50), (3000, 200), (28, 28)])
def test_target_size_matches_smart_resize(height, width):
    expected = smart_resize(height, width, factor=28, min_pixels=78_400, max_pixels=602_112)
    assert target_size(height, width, 78_400, 602_112) == expected


def test_reference_token_counts():
    assert target_size(720, 1280, 78_400, 602_112) == (560, 1008)  # 720 tokens per window
    height, width = target_size(480, 640, 78_400, 602_112)
    assert (height // 28) * (width // 28) == 391  # 476x644
