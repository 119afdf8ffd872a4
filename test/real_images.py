"""Real photographs for tests: COIL-100 views from ../shared/data, scikit-image samples."""

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
COIL_IMAGES = SHARED_DATA / 'coil100' / 'images'
NIC_COIL = SHARED_DATA / 'coil100' / 'NIC_coil'


def require_coil():
    """Skip the calling test when the COIL-100 images are not beside the checkout."""
    if not COIL_IMAGES.is_dir():
        pytest.skip(f'real COIL-100 images not found at {COIL_IMAGES} (../shared/data absent)')


def coil_views(obj: int, angles) -> np.ndarray:
    """COIL-100 object ``obj`` at the given turntable angles (N x 128 x 128 x 3 uint8)."""
    from PIL import Image

    require_coil()
    frames = []
    for angle in angles:
        with Image.open(COIL_IMAGES / f'obj{obj}__{angle}.png') as img:
            frames.append(np.asarray(img.convert('RGB')))
    return np.stack(frames)


def skimage_views(name: str, count: int, size: int = 160, seed: int = 0) -> np.ndarray:
    """``count`` random crops (with flips) of a scikit-image sample photo, as viewpoints."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3].astype(np.uint8)
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    side = min(h, w, max(size, int(min(h, w) * 0.8)))
    views = []
    for _ in range(count):
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = image[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        views.append(np.ascontiguousarray(crop))
    return np.stack(views)
