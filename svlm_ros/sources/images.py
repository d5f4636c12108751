"""sensor_msgs Image / CompressedImage to RGB numpy frames, through rosbags-image.

Works on rclpy and rosbags messages alike (the same field names). `BadImage` names what is wrong
with a frame, and its `cause` is the key of the bad-frame counters every path keeps.
"""
from __future__ import annotations

import numpy as np
from rosbags.image import ImageFormatError, message_to_cvimage


class BadImage(ValueError):
    """An unusable image; `cause` names the kind, for counters by cause."""

    def __init__(self, message: str, cause: str = "undecodable"):
        super().__init__(message)
        self.cause = cause


def to_rgb(msg) -> np.ndarray:
    """An HxWx3 uint8 RGB frame; raises BadImage with the reason for anything unusable."""
    if hasattr(msg, "format"):
        if not len(msg.data):
            raise BadImage("empty CompressedImage", "empty")
    elif msg.width == 0 or msg.height == 0:
        raise BadImage(f"zero-size image {msg.width}x{msg.height}", "zero_size")
    try:
        image = message_to_cvimage(msg, "rgb8")
    except Exception as error:  # rosbags-image and OpenCV raise several types for bad data
        kind = getattr(msg, "format", None) or getattr(msg, "encoding", "?")
        compressed = hasattr(msg, "format")
        # OpenCV signals bad compressed data by returning None, which reaches here with no message.
        reason = str(error) or (f"OpenCV could not decode the {_format_name(kind)} data (corrupt or truncated)"
                                if compressed else "the data does not match its encoding, width, height and step")
        raise BadImage(f"cannot decode {kind!r} image: {reason}",
                       "corrupt_compressed" if compressed else _raw_cause(msg, error)) from error
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadImage("image decoded to no pixels (corrupt or truncated data)", "corrupt_compressed")
    if image.dtype != np.uint8:  # 16-bit colour: scale to 8 bits
        image = (image.astype(np.float32) / np.iinfo(image.dtype).max * 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _format_name(fmt: str) -> str:
    name = fmt.split(";")[0].strip().upper()  # image_transport writes "rgb8; jpeg compressed bgr8"
    if "JPEG" in fmt.upper() or name == "JPG":
        return "JPEG"
    return "PNG" if "PNG" in fmt.upper() else (name or "compressed")


def _raw_cause(msg, error: Exception) -> str:
    return "unknown_encoding" if isinstance(error, ImageFormatError) else "malformed_raw"
