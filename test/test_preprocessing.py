"""Camera frames -> normalised network input: arithmetic, crops, and refusals."""

import numpy as np
import pytest
import torch

from ros2_latent_replay.core.errors import InputError
from ros2_latent_replay.core.preprocessing import center_square, frames_to_tensor

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _reference(frame: np.ndarray, mean, std) -> torch.Tensor:
    """``(rgb / 255 - mean) / std`` in float32 torch, channel first, one frame."""
    t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    return (t / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _every_byte_value(size: int, seed: int) -> np.ndarray:
    values = np.arange(256, dtype=np.uint8)
    flat = np.resize(values, size * size * 3)
    return np.random.default_rng(seed).permutation(flat).reshape(size, size, 3)


@pytest.mark.parametrize('mean, std', [IMAGENET, HALF])
def test_frames_of_the_input_size_are_normalised_bit_exactly(mean, std):
    frames = [_every_byte_value(32, seed) for seed in range(3)]
    got = frames_to_tensor(frames, 32, mean, std)
    expected = torch.cat([_reference(f, mean, std) for f in frames])
    assert got.dtype == torch.float32 and got.shape == (3, 3, 32, 32)
    assert got.is_contiguous()
    assert torch.equal(got, expected)


def test_a_batch_array_and_a_list_give_the_same_tensor():
    frames = np.stack([_every_byte_value(16, seed) for seed in range(2)])
    assert torch.equal(frames_to_tensor(frames, 16, *IMAGENET),
                       frames_to_tensor(list(frames), 16, *IMAGENET))


def test_channel_order_is_rgb_in_channel_first_layout():
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 0, 51
    x = frames_to_tensor([frame], 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert torch.allclose(x[0, :, 3, 3], torch.tensor([1.0, 0.0, 0.2]))


def test_other_sizes_are_centre_cropped_then_resized():
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 10:30] = 200          # the centred 20 x 20 square is uniform
    x = frames_to_tensor([wide], 10, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x.shape == (1, 3, 10, 10)
    assert torch.allclose(x, torch.full_like(x, 200 / 255.0), atol=1e-6)
    assert center_square(wide).shape == (20, 20, 3)


def test_mixed_sizes_and_grey_frames_in_one_batch():
    grey = np.full((12, 12), 128, dtype=np.uint8)
    colour = _every_byte_value(12, 0)
    big = np.full((24, 30, 3), 64, dtype=np.uint8)
    x = frames_to_tensor([grey, colour, big], 12, *HALF)
    assert x.shape == (3, 3, 12, 12)
    assert torch.all(x[0] == x[0, 0, 0, 0])
    assert torch.allclose(x[1], _reference(colour, *HALF)[0], atol=1e-6)
    assert torch.allclose(x[2], torch.full_like(x[2], (64 / 255.0 - 0.5) / 0.5), atol=1e-6)


@pytest.mark.parametrize('frames, message', [
    ([], 'no frames'),
    ([np.zeros((16, 16, 3), dtype=np.float32)], 'dtype'),
    ([np.zeros((16, 16, 4), dtype=np.uint8)], 'shape'),
    ([np.zeros((4, 16, 3), dtype=np.uint8)], 'at least 8x8'),
    (['not an image'], 'numpy array'),
    (np.zeros((16, 16, 3), dtype=np.uint8), 'pass a batch'),
    ('frames', 'numpy array or a list'),
])
def test_bad_frames_are_refused_with_the_reason(frames, message):
    with pytest.raises(InputError, match=message):
        frames_to_tensor(frames, 16, *HALF)
