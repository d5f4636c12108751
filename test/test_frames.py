"""Frame preprocessing matches transformers' Qwen2-VL image processor."""
import cv2
import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from svlm_ros.engine.frames import CLIP_STD, preprocess_frames, resize_frames, target_size
from svlm_ros.synthetic import moving_shapes


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


def natural_scene(height, width):
    """Shapes, a gradient and camera-like fine texture: what a downscaling filter must not alias."""
    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (height, width, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(moving_shapes(3.3, height, width).astype(np.float32) + texture, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height,width,max_levels", [(480, 640, 16), (720, 1280, 1), (1080, 1920, 1)])
def test_off_grid_camera_sizes_match_the_qwen_processor(height, width, max_levels):
    """Resizing as the reference does: antialiased bicubic (OpenCV's plain cubic failed this).

    transformers' Qwen2-VL video processor needs torchvision, whose PyPI wheels are CUDA builds
    that do not load beside the CPU torch; its PIL image processor resizes with the same filter
    (bicubic, a=-0.5, antialiased when shrinking) in a different fixed-point arithmetic. So the
    tolerance is one gray level on 99.9% of values and a mean under a quarter level; downscales
    agree within one level everywhere; at 640x480 (scaled by ~1) a few pixels on saturated edges
    differ by up to 11 levels, where the two clip and round their two passes in different orders. OpenCV's cubic was 23-51 levels off at 720p/1080p on the 99.9th percentile."""
    frame = natural_scene(height, width)
    ours = preprocess_frames([frame, frame], min_pixels=78_400, max_pixels=602_112)
    theirs = Qwen2VLImageProcessorPil()(images=[frame], return_tensors="np", min_pixels=78_400,
                                        max_pixels=602_112)
    assert ours.grid_thw == tuple(theirs["image_grid_thw"][0])
    std = np.tile(np.repeat(np.asarray(CLIP_STD), 2 * 14 * 14), 1)  # per value: (C, T, ph, pw) order
    levels = np.abs(ours.pixel_values - theirs["pixel_values"]) * std * 255
    assert np.percentile(levels, 99.9) <= 1.0 + 1e-3
    assert levels.mean() <= 0.25
    assert levels.max() <= max_levels + 1e-3


def test_1080p_fine_detail_is_antialiased():
    """One-pixel stripes shrunk to 560x1008 average to grey; without antialiasing they alias."""
    stripes = np.zeros((1080, 1920, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    resized = resize_frames([stripes], 560, 1008)[0].astype(float)
    assert abs(resized.mean() - 127.5) < 3 and resized[4:-4, 4:-4].std() < 12


def test_a_window_across_a_resolution_change_is_resized_to_one_grid(rng):
    small, large = rng.integers(0, 256, (48, 64, 3), np.uint8), rng.integers(0, 256, (96, 64, 3), np.uint8)
    vision = preprocess_frames([small, large], min_pixels=3136, max_pixels=200 * 200)
    alone = preprocess_frames([small, small], min_pixels=3136, max_pixels=200 * 200)
    assert vision.grid_thw == alone.grid_thw  # the first frame sets the window's grid
