"""sensor_msgs Image / CompressedImage to RGB numpy frames, through rosbags-image."""
from __future__ import annotations

import numpy as np
from rosbags.image import message_to_cvimage


class BadImage(ValueError):
    pass


def to_rgb(msg) -> np.ndarray:
    """An HxWx3 uint8 RGB frame; raises BadImage with the reason for anything unusable."""
    if hasattr(msg, "format"):
        if not len(msg.data):
            raise BadImage("empty CompressedImage")
    elif msg.width == 0 or msg.height == 0:
        raise BadImage(f"zero-size image {msg.width}x{msg.height}")
    try:
        image = message_to_cvimage(msg, "rgb8")
    except Exception as error:  # rosbags-image and OpenCV raise several types for bad data
        kind = getattr(msg, "format", None) or getattr(msg, "encoding", "?")
        raise BadImage(f"cannot decode {kind!r} image: {error}") from error
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadImage("image decoded to no pixels")
    if image.dtype != np.uint8:  # 16-bit colour: scale to 8 bits
        image = (image.astype(np.float32) / np.iinfo(image.dtype).max * 255).astype(np.uint8)
    return np.ascontiguousarray(image)
