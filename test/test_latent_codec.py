"""Storage of latents: sizes, exactness, the uint8 error bound and input validation."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from real_images import skimage_views
from ros2_latent_replay.core import latent_codec
from ros2_latent_replay.core.errors import ConfigError, InputError

F32_EPS = float(np.finfo(np.float32).eps)


def _uint8_tolerance(record, x):
    """Per-element bound: half a quantisation step plus one float32 rounding of the result."""
    half_step = record['scale'].astype(np.float64)[:, :, None, None] / 2
    return half_step * (1 + 1e-6) + F32_EPS * np.abs(x.astype(np.float64)) + 1e-30


def _check_uint8_bound(x):
    record = latent_codec.encode(x, 'uint8')
    decoded = latent_codec.decode(record, 'uint8')
    assert decoded.dtype == np.float32 and decoded.shape == x.shape
    err = np.abs(decoded.astype(np.float64) - x.astype(np.float64))
    tol = _uint8_tolerance(record, x)
    worst = float((err - tol).max())
    assert worst <= 0, f'uint8 error exceeds scale/2 by {worst}'
    return record, decoded


def test_bytes_per_pattern_of_the_documented_shapes():
    assert latent_codec.bytes_per_pattern('float32', (192, 4, 4)) == 12288
    assert latent_codec.bytes_per_pattern('float16', (192, 4, 4)) == 6144
    # 3,072 code bytes + float32 scale and offset per channel (192 * 8)
    assert latent_codec.bytes_per_pattern('uint8', (192, 4, 4)) == 3072 + 1536
    assert latent_codec.bytes_per_pattern('float32', (512, 8, 8)) == 131072
    assert latent_codec.bytes_per_pattern('uint8', (512, 8, 8)) == 32768 + 4096


@pytest.mark.parametrize('storage', latent_codec.STORAGES)
def test_record_bytes_match_bytes_per_pattern(storage):
    x = np.random.default_rng(0).normal(size=(5, 6, 3, 2)).astype(np.float32)
    record = latent_codec.encode(x, storage)
    per_pattern = sum(value.nbytes for value in record.values()) // 5
    assert per_pattern == latent_codec.bytes_per_pattern(storage, (6, 3, 2))
    assert latent_codec.check_record(record, storage, (6, 3, 2)) == 5


def test_float32_is_lossless_and_never_aliases_the_input():
    x = np.random.default_rng(1).normal(size=(4, 8, 2, 2)).astype(np.float32) * 1e3
    record = latent_codec.encode(x, 'float32')
    assert not np.shares_memory(record['data'], x)
    np.testing.assert_array_equal(latent_codec.decode(record, 'float32'), x)
    t = torch.from_numpy(x.copy())
    record = latent_codec.encode(t, 'float32')
    t.zero_()
    np.testing.assert_array_equal(record['data'], x)


def test_float16_relative_error():
    x = np.random.default_rng(2).normal(size=(6, 16, 3, 3)).astype(np.float32) * 50
    record = latent_codec.encode(x, 'float16')
    assert record['data'].dtype == np.float16
    y = latent_codec.decode(record, 'float16')
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -11 + 2.0 ** -24)


def test_float16_refuses_values_beyond_its_range():
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 1, 1, 1] = 70000.0
    with pytest.raises(InputError, match='float16 range'):
        latent_codec.encode(x, 'float16')


@pytest.mark.parametrize('kind', ['normal', 'relu6', 'negative', 'offset', 'tiny', 'huge'])
def test_uint8_error_bound(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 32, 4, 4))
    if kind == 'relu6':
        x = np.clip(x * 4, 0, 6)            # many exact zeros and sixes
    elif kind == 'negative':
        x = -np.abs(x) * 3 - 1
    elif kind == 'offset':
        x = 1000 + x * 1e-2                 # small range far from zero
    elif kind == 'tiny':
        x = x * 1e-30
    elif kind == 'huge':
        x = x * 1e37
    x = x.astype(np.float32)
    record, decoded = _check_uint8_bound(x)
    flat = x.reshape(16, 32, -1)
    codes = record['data'].reshape(16, 32, -1)
    # offset is the channel minimum, which decodes exactly; the maximum gets code 255
    np.testing.assert_array_equal(record['offset'], flat.min(axis=2))
    moving = record['scale'] > 0
    assert np.all(codes.max(axis=2)[moving] == 255)
    assert np.all(codes.min(axis=2) == 0)
    np.testing.assert_array_equal(decoded.reshape(16, 32, -1).min(axis=2), flat.min(axis=2))


def test_uint8_on_real_latents_keeps_the_features():
    from ros2_latent_replay.core.backbones import build_backbone

    backbone = build_backbone('efficientnet_lite0', 'blocks.5.1')
    images = skimage_views('astronaut', 6, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode='bilinear',
                                        antialias=True, align_corners=False)
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        latents = backbone.lower(x)
    assert tuple(latents.shape[1:]) == (192, 4, 4)
    array = latents.numpy()
    assert array.min() < 0 < array.max(), 'expected real-valued block outputs'
    record, decoded = _check_uint8_bound(array)
    with torch.no_grad():
        original = backbone.upper(latents)
        restored = backbone.upper(torch.from_numpy(decoded))
    cosine = torch.nn.functional.cosine_similarity(original, restored, dim=1)
    assert cosine.min() > 0.99, f'pooled features drifted: cosine {cosine.tolist()}'


def test_uint8_constant_channels_decode_exactly():
    x = np.random.default_rng(4).normal(size=(3, 5, 2, 3)).astype(np.float32)
    x[0, 2] = 1.5
    x[1] = 0.0
    x[2, 4] = -7.25
    with np.errstate(all='raise'):          # no division by zero anywhere
        record = latent_codec.encode(x, 'uint8')
        decoded = latent_codec.decode(record, 'uint8')
    assert record['scale'][0, 2] == 0 and np.all(record['scale'][1] == 0)
    np.testing.assert_array_equal(decoded[0, 2], x[0, 2])
    np.testing.assert_array_equal(decoded[1], x[1])
    np.testing.assert_array_equal(decoded[2, 4], x[2, 4])
    _check_uint8_bound(x)


def test_uint8_scales_are_per_pattern_and_channel():
    x = np.zeros((2, 2, 1, 4), np.float32)
    x[0, 0, 0] = [0, 1, 2, 3]               # range 3
    x[0, 1, 0] = [0, 100, 200, 300]         # range 300
    x[1, 0, 0] = [-5, 5, 0, 1]              # range 10
    record = latent_codec.encode(x, 'uint8')
    np.testing.assert_allclose(record['scale'], np.array([[3, 300], [10, 0]]) / 255, rtol=1e-6)
    np.testing.assert_array_equal(record['offset'], [[0, 0], [-5, 0]])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=4, max_dims=4, max_side=5),
                  elements=st.floats(-2.0 ** 100, 2.0 ** 100, width=32)))
def test_uint8_bound_holds_for_arbitrary_finite_values(x):
    _check_uint8_bound(x)


def test_inputs_from_torch_and_other_float_dtypes():
    x = np.random.default_rng(5).normal(size=(2, 3, 2, 2))
    for value in (x, x.astype(np.float16), torch.from_numpy(x),
                  torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(x).requires_grad_()):
        record = latent_codec.encode(value, 'float32')
        assert record['data'].dtype == np.float32 and record['data'].shape == (2, 3, 2, 2)


@pytest.mark.parametrize('storage', latent_codec.STORAGES)
def test_empty_batch(storage):
    record = latent_codec.encode(np.zeros((0, 3, 2, 2), np.float32), storage)
    assert latent_codec.decode(record, storage).shape == (0, 3, 2, 2)


@pytest.mark.parametrize('storage', latent_codec.STORAGES)
@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(storage, bad):
    x = np.ones((2, 3, 2, 2), np.float32)
    x[1, 2, 0, 1] = bad
    with pytest.raises(InputError, match='NaN/inf'):
        latent_codec.encode(x, storage)
    with pytest.raises(InputError, match='NaN/inf'):
        latent_codec.encode(torch.from_numpy(x), storage)


def test_float64_overflowing_float32_is_rejected():
    x = np.ones((1, 1, 1, 2), np.float64)
    x[0, 0, 0, 0] = 1e300
    with pytest.raises(InputError, match='NaN/inf'):
        latent_codec.encode(x, 'uint8')


@pytest.mark.parametrize('value, match', [
    (np.ones((2, 3, 4), np.float32), 'shape'),
    (np.ones((1, 3, 2, 2), np.int64), 'floating'),
    (torch.ones((1, 3, 2, 2), dtype=torch.int32), 'floating'),
    ([[[[1.0]]]], 'numpy array or torch tensor'),
])
def test_bad_inputs_are_rejected(value, match):
    with pytest.raises(InputError, match=match):
        latent_codec.encode(value, 'uint8')


def test_shape_must_match_the_declared_latent_shape():
    with pytest.raises(InputError, match='per-pattern shape'):
        latent_codec.encode(np.ones((1, 3, 2, 2), np.float32), 'uint8', (3, 2, 3))


def test_unknown_storage_and_bad_shapes():
    with pytest.raises(ConfigError, match='int4'):
        latent_codec.encode(np.ones((1, 1, 1, 1), np.float32), 'int4')
    with pytest.raises(ConfigError):
        latent_codec.bytes_per_pattern('bfloat16', (1, 1, 1))
    for shape in [(0, 4, 4), (3, 4), (3, 4, 4, 1), (3, 4.0, 4), (True, 1, 1), 7]:
        with pytest.raises(InputError):
            latent_codec.bytes_per_pattern('uint8', shape)
    assert latent_codec.storage_from_code(latent_codec.STORAGE_CODES['uint8']) == 'uint8'
    with pytest.raises(ConfigError):
        latent_codec.storage_from_code(0)


def test_decode_checks_the_record():
    record = latent_codec.encode(np.ones((2, 3, 2, 2), np.float32), 'uint8')
    with pytest.raises(InputError, match='fields'):
        latent_codec.decode({'data': record['data']}, 'uint8')
    with pytest.raises(InputError, match='scale'):
        latent_codec.decode(dict(record, scale=record['scale'][:1]), 'uint8')
    with pytest.raises(InputError, match='data'):
        latent_codec.decode(dict(record, data=record['data'].astype(np.float32)), 'float16')
