"""Every camera encoding the node accepts becomes an RGB uint8 frame; bad ones raise BadImage."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from svlm_ros.sources.images import BadImage, to_rgb

RGB = np.zeros((4, 6, 3), np.uint8)
RGB[..., 0] = 200  # red


def image(encoding, array):
    step = array.shape[1] * array.dtype.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    return Image(height=array.shape[0], width=array.shape[1], encoding=encoding, step=step,
                 is_bigendian=0, data=array.tobytes())


@pytest.mark.parametrize("encoding,array", [
    ("rgb8", RGB), ("bgr8", RGB[..., ::-1].copy()), ("rgba8", np.dstack([RGB, np.full((4, 6), 255, np.uint8)])),
    ("rgb16", RGB.astype(np.uint16) * 257),
])
def test_colour_encodings_give_red(encoding, array):
    frame = to_rgb(image(encoding, array))
    assert frame.dtype == np.uint8 and frame.shape == (4, 6, 3)
    assert frame[..., 0].min() >= 195 and frame[..., 1:].max() <= 5


@pytest.mark.parametrize("encoding,array", [
    ("mono8", np.full((4, 6), 100, np.uint8)), ("mono16", np.full((4, 6), 100 * 257, np.uint16)),
    ("bayer_rggb8", np.full((4, 6), 100, np.uint8)),
])
def test_gray_and_bayer_encodings(encoding, array):
    frame = to_rgb(image(encoding, array))
    assert frame.shape == (4, 6, 3) and frame.dtype == np.uint8
    assert abs(int(frame.mean()) - 100) <= 2


def test_yuv422_is_decoded():
    packed = np.full((4, 6, 2), 128, np.uint8)  # gray in UYVY
    frame = to_rgb(image("yuv422", packed))
    assert frame.shape == (4, 6, 3)


@pytest.mark.parametrize("extension,fmt", [(".jpg", "jpeg"), (".png", "png")])
def test_compressed_images(extension, fmt):
    ok, data = cv2.imencode(extension, cv2.cvtColor(np.repeat(np.repeat(RGB, 8, 0), 8, 1), cv2.COLOR_RGB2BGR))
    frame = to_rgb(CompressedImage(format=fmt, data=data.tobytes()))
    assert frame.shape == (32, 48, 3) and frame[..., 0].mean() > 180 and frame[..., 2].mean() < 20


@pytest.mark.parametrize("msg", [
    Image(height=0, width=0, encoding="rgb8"),
    image("32FC7", np.zeros((4, 6, 7), np.float32)),
    CompressedImage(format="jpeg", data=b"\xff\xd8 broken"),
    CompressedImage(format="jpeg", data=b""),
], ids=["zero-size", "unsupported", "corrupt-jpeg", "empty-jpeg"])
def test_bad_images_raise(msg):
    with pytest.raises(BadImage):
        to_rgb(msg)
