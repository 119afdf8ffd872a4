"""sensor_msgs/Image fields <-> numpy RGB uint8 arrays, without any ROS import.

The node hands the message fields to :func:`image_fields_to_rgb`; tests and the demo build
message fields from arrays with :func:`rgb_to_image_fields`. Only 8-bit encodings are
accepted (``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8``); anything else raises
:class:`UnsupportedEncodingError` naming the encoding, and a message whose ``step``,
``width``, ``height`` and data length do not agree raises :class:`MalformedImageError`.
"""

from typing import Any, Dict

import numpy as np

from .core.errors import InputError

#: encoding -> (channels, indices of R, G, B in a pixel)
SUPPORTED_ENCODINGS = {
    'rgb8': (3, (0, 1, 2)),
    'bgr8': (3, (2, 1, 0)),
    'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)),
    'mono8': (1, (0, 0, 0)),
}

#: refuse absurd dimensions before touching the data (a 16k x 16k frame is already 768 MB)
MAX_SIDE = 16384


class UnsupportedEncodingError(InputError):
    """The image encoding is not one the node converts."""


class MalformedImageError(InputError):
    """Width, height, step and data length of an image message do not agree."""


def _buffer(data: Any) -> np.ndarray:
    """View message data (bytes, bytearray, array.array('B'), list of ints) as flat uint8."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return data.reshape(-1)
    if not isinstance(data, np.ndarray):
        try:
            return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
        except TypeError:
            pass
    values = np.asarray(data)
    if values.size == 0:
        return values.astype(np.uint8).reshape(-1)
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 255:
        raise MalformedImageError('image data must be bytes or integers in 0..255')
    return values.astype(np.uint8).reshape(-1)


def image_fields_to_rgb(encoding: str, height: int, width: int, step: int,
                        is_bigendian: int, data: Any) -> np.ndarray:
    """Convert the fields of a ``sensor_msgs/Image`` to an ``height x width x 3`` RGB array.

    ``is_bigendian`` has no effect on 8-bit encodings and is accepted for completeness.
    Rows may be padded (``step`` larger than ``width * channels``); the padding is dropped.
    The result is a new C-contiguous array that does not share memory with ``data``.
    """
    del is_bigendian  # 8-bit channels have no byte order
    layout = SUPPORTED_ENCODINGS.get(encoding)
    if layout is None:
        raise UnsupportedEncodingError(
            f'image encoding {encoding!r} is not supported; send one of '
            f'{", ".join(SUPPORTED_ENCODINGS)}')
    channels, rgb_index = layout
    height, width, step = int(height), int(width), int(step)
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise MalformedImageError(
            f'image size {width}x{height} is out of range (1..{MAX_SIDE} per side)')
    row_bytes = width * channels
    if step < row_bytes:
        raise MalformedImageError(
            f'step {step} is smaller than width x channels = {row_bytes} for {encoding}')
    flat = _buffer(data)
    if flat.size != step * height:
        raise MalformedImageError(
            f'image data has {flat.size} bytes; step x height = {step} x {height} = '
            f'{step * height}')
    rows = flat.reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, list(rgb_index)])


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> Dict[str, Any]:
    """Encode an ``H x W x 3`` uint8 RGB array as ``sensor_msgs/Image`` field values.

    Returns ``encoding``, ``height``, ``width``, ``step``, ``is_bigendian`` and ``data``
    (``bytes``; assigning bytes to a message is far cheaper than assigning an array).
    ``mono8`` stores the ITU-R 601 luma of the image.
    """
    if encoding not in SUPPORTED_ENCODINGS:
        raise UnsupportedEncodingError(
            f'image encoding {encoding!r} is not supported; use one of '
            f'{", ".join(SUPPORTED_ENCODINGS)}')
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f'expected an H x W x 3 uint8 RGB array, got {rgb.dtype} {rgb.shape}')
    height, width = rgb.shape[:2]
    if encoding == 'mono8':
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        pixels = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    else:
        channels, rgb_index = SUPPORTED_ENCODINGS[encoding]
        pixels = np.empty((height, width, channels), dtype=np.uint8)
        pixels[:, :, list(rgb_index)] = rgb
        if channels == 4:
            pixels[:, :, 3] = 255
    return {
        'encoding': encoding,
        'height': height,
        'width': width,
        'step': width * pixels.shape[2],
        'is_bigendian': 0,
        'data': np.ascontiguousarray(pixels).tobytes(),
    }
