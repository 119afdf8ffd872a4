"""sensor_msgs/Image fields -> RGB uint8, without ROS: encodings, padding, malformed input."""

import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from ros2_latent_replay.core.errors import InputError
from ros2_latent_replay.image_conversion import (SUPPORTED_ENCODINGS, MalformedImageError,
                                                 UnsupportedEncodingError,
                                                 image_fields_to_rgb, rgb_to_image_fields)

PHOTO = data.chelsea()[40:77, 100:163]          # a real photo, odd size 63 x 37


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_colour_encodings_round_trip_exactly(encoding):
    fields = rgb_to_image_fields(PHOTO, encoding)
    assert (fields['height'], fields['width']) == PHOTO.shape[:2]
    assert fields['step'] == PHOTO.shape[1] * SUPPORTED_ENCODINGS[encoding][0]
    rgb = image_fields_to_rgb(**fields)
    assert rgb.dtype == np.uint8 and rgb.shape == PHOTO.shape and rgb.flags.c_contiguous
    assert np.array_equal(rgb, PHOTO)


def test_channel_order_of_each_encoding():
    red = {'rgb8': [255, 0, 0], 'bgr8': [0, 0, 255], 'rgba8': [255, 0, 0, 7],
           'bgra8': [0, 0, 255, 7]}
    for encoding, pixel in red.items():
        rgb = image_fields_to_rgb(encoding, 1, 1, len(pixel), 0, bytes(pixel))
        assert rgb.tolist() == [[[255, 0, 0]]], encoding


def test_mono8_becomes_three_equal_channels():
    grey = data.camera()[:20, :30]
    rgb = image_fields_to_rgb('mono8', 20, 30, 30, 0, grey.tobytes())
    assert rgb.shape == (20, 30, 3)
    for channel in range(3):
        assert np.array_equal(rgb[:, :, channel], grey)
    fields = rgb_to_image_fields(PHOTO, 'mono8')
    luma = image_fields_to_rgb(**fields)
    assert np.array_equal(luma[:, :, 0], luma[:, :, 2])
    assert abs(float(luma.mean()) - float(PHOTO.mean())) < 20.0


def test_padded_rows_are_dropped():
    height, width = PHOTO.shape[:2]
    step = width * 3 + 5
    padded = np.full((height, step), 200, dtype=np.uint8)
    padded[:, :width * 3] = PHOTO.reshape(height, width * 3)
    assert np.array_equal(image_fields_to_rgb('rgb8', height, width, step, 0, padded.tobytes()),
                          PHOTO)


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'array', 'list', 'numpy', 'memoryview'])
def test_every_data_container_rclpy_may_hand_over(kind):
    raw = PHOTO.tobytes()
    payload = {'bytes': raw, 'bytearray': bytearray(raw), 'array': array.array('B', raw),
               'list': list(raw), 'numpy': np.frombuffer(raw, dtype=np.uint8),
               'memoryview': memoryview(raw)}[kind]
    rgb = image_fields_to_rgb('rgb8', PHOTO.shape[0], PHOTO.shape[1], PHOTO.shape[1] * 3, 0,
                              payload)
    assert np.array_equal(rgb, PHOTO)


def test_result_does_not_alias_the_message_buffer():
    buffer = bytearray(PHOTO.tobytes())
    rgb = image_fields_to_rgb('rgb8', PHOTO.shape[0], PHOTO.shape[1], PHOTO.shape[1] * 3, 0,
                              buffer)
    buffer[:] = bytes(len(buffer))
    assert np.array_equal(rgb, PHOTO)


@pytest.mark.parametrize('encoding', ['16UC1', 'rgb16', 'bayer_rggb8', 'yuv422', '', 'RGB8',
                                      '32FC1', 'jpeg'])
def test_other_encodings_are_refused_by_name(encoding):
    with pytest.raises(UnsupportedEncodingError) as info:
        image_fields_to_rgb(encoding, 4, 4, 12, 0, bytes(48))
    assert repr(encoding) in str(info.value)
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize('height, width, step, size, words', [
    (4, 4, 12, 47, 'data has 47 bytes'),          # one byte short
    (4, 4, 12, 49, 'data has 49 bytes'),          # one byte too many
    (4, 4, 11, 44, 'step 11 is smaller'),         # rows narrower than the pixels
    (0, 4, 12, 0, 'out of range'),
    (4, -1, 12, 48, 'out of range'),
    (100000, 100000, 300000, 0, 'out of range'),
])
def test_malformed_messages_are_refused(height, width, step, size, words):
    with pytest.raises(MalformedImageError, match=words):
        image_fields_to_rgb('rgb8', height, width, step, 0, bytes(size))


def test_values_outside_bytes_are_refused():
    with pytest.raises(MalformedImageError):
        image_fields_to_rgb('mono8', 1, 2, 2, 0, [3, 300])
    with pytest.raises(MalformedImageError):
        image_fields_to_rgb('mono8', 1, 2, 2, 0, [0.5, 1.0])


def test_encoder_refuses_what_it_cannot_encode():
    with pytest.raises(UnsupportedEncodingError):
        rgb_to_image_fields(PHOTO, '16UC1')
    with pytest.raises(InputError):
        rgb_to_image_fields(PHOTO.astype(np.float32), 'rgb8')
    with pytest.raises(InputError):
        rgb_to_image_fields(PHOTO[:, :, 0], 'rgb8')


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), pad=st.integers(0, 7),
       encoding=st.sampled_from(sorted(SUPPORTED_ENCODINGS)), seed=st.integers(0, 2**16))
def test_any_size_and_padding_round_trips(height, width, pad, encoding, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    fields = rgb_to_image_fields(rgb, encoding)
    channels = SUPPORTED_ENCODINGS[encoding][0]
    rows = np.frombuffer(fields['data'], np.uint8).reshape(height, width * channels)
    padded = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1)
    out = image_fields_to_rgb(encoding, height, width, width * channels + pad, 0,
                              padded.tobytes())
    if encoding == 'mono8':
        assert np.array_equal(out[:, :, 0], rows)
    else:
        assert np.array_equal(out, rgb)
