"""How latents are stored in the replay memory: float32, float16 or 8-bit affine codes.

A *record* is a dict of numpy arrays, one row per pattern:

``float32``
    ``data`` float32 ``[k, C, H, W]``; lossless.
``float16``
    ``data`` float16 ``[k, C, H, W]``; relative error <= 2**-11, values beyond +-65504 are
    refused.
``uint8``
    ``data`` uint8 ``[k, C, H, W]``, ``scale`` and ``offset`` float32 ``[k, C]``: affine
    quantisation with a zero point, one scale per channel *and pattern*
    (``offset`` = the channel's minimum over its H*W values, ``scale`` = its range / 255,
    rounded up to the next float32 so no code is ever clipped). Decoding gives
    ``code * scale + offset`` and every element satisfies
    ``|x - decode(encode(x))| <= scale / 2`` plus one float32 rounding of the result.
    A constant channel gets ``scale = 0`` and decodes exactly.

Nothing here imports ROS; inputs may be numpy arrays or torch tensors.
"""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import ConfigError, InputError

STORAGES = ('float32', 'float16', 'uint8')
# Codes written into the shared-memory header; never renumber (0 = invalid/unset).
STORAGE_CODES = {'float32': 1, 'float16': 2, 'uint8': 3}
FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504
UINT8_LEVELS = 255
_DECODE_BLOCK_ELEMENTS = 1 << 16

LatentShape = Tuple[int, int, int]
Record = Dict[str, np.ndarray]


def check_storage(storage: Any) -> str:
    """Return ``storage`` when it names a known storage type, else raise ConfigError."""
    if not isinstance(storage, str) or storage not in STORAGES:
        raise ConfigError(
            f'replay storage {storage!r} is not one of {", ".join(STORAGES)}')
    return storage


def storage_from_code(code: int) -> str:
    """Storage name for a header code; ConfigError for an unknown code."""
    for name, value in STORAGE_CODES.items():
        if value == code:
            return name
    raise ConfigError(f'unknown replay storage code {code!r}')


def check_latent_shape(latent_shape: Any) -> LatentShape:
    """Return ``latent_shape`` as a tuple ``(C, H, W)`` of positive ints, else InputError."""
    try:
        dims = tuple(latent_shape)
    except TypeError:
        raise InputError(
            f'latent shape must be a (C, H, W) sequence, got {latent_shape!r}') from None
    if len(dims) != 3 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
            for d in dims):
        raise InputError(
            f'latent shape must be three positive integers (C, H, W), got {latent_shape!r}')
    return tuple(int(d) for d in dims)


def record_fields(storage: str, latent_shape: Sequence[int]
                  ) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """Per-pattern layout of a record: ``{field: (dtype, shape of one pattern's row)}``."""
    storage = check_storage(storage)
    shape = check_latent_shape(latent_shape)
    if storage == 'float32':
        return {'data': (np.dtype(np.float32), shape)}
    if storage == 'float16':
        return {'data': (np.dtype(np.float16), shape)}
    return {'data': (np.dtype(np.uint8), shape),
            'scale': (np.dtype(np.float32), shape[:1]),
            'offset': (np.dtype(np.float32), shape[:1])}


def bytes_per_pattern(storage: str, latent_shape: Sequence[int]) -> int:
    """Bytes one stored pattern takes, scale/offset overhead included (labels excluded)."""
    return sum(dtype.itemsize * int(np.prod(row))
               for dtype, row in record_fields(storage, latent_shape).values())


def as_float32_latents(latents: Any, latent_shape: Optional[Sequence[int]] = None
                       ) -> np.ndarray:
    """Validate latents (numpy or torch, any float dtype) and return C-contiguous float32.

    Raises InputError for a non-float dtype, a rank other than 4, a shape that does not
    match ``latent_shape`` (when given) and any NaN or infinite value.
    """
    if isinstance(latents, torch.Tensor):
        if not latents.is_floating_point():
            raise InputError(f'latents must be a floating-point tensor, got {latents.dtype}')
        array = latents.detach().to(device='cpu', dtype=torch.float32).numpy()
    elif isinstance(latents, np.ndarray):
        if latents.dtype.kind != 'f':
            raise InputError(f'latents must be a floating-point array, got {latents.dtype}')
        with np.errstate(over='ignore'):
            array = latents.astype(np.float32, copy=False)
    else:
        raise InputError(
            f'latents must be a numpy array or torch tensor, got {type(latents).__name__}')
    if array.ndim != 4:
        raise InputError(f'latents must have shape [k, C, H, W], got {tuple(array.shape)}')
    if latent_shape is not None:
        expected = check_latent_shape(latent_shape)
        if tuple(array.shape[1:]) != expected:
            raise InputError(
                f'latents have per-pattern shape {tuple(array.shape[1:])}, '
                f'the replay memory stores {expected}')
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(
            f'latents contain {bad} NaN/inf value(s) (after conversion to float32); '
            'refusing to store them')
    return np.ascontiguousarray(array)


def encode(latents: Any, storage: str, latent_shape: Optional[Sequence[int]] = None
           ) -> Record:
    """Encode float latents ``[k, C, H, W]`` into a record of the given storage type."""
    storage = check_storage(storage)
    x = as_float32_latents(latents, latent_shape)
    if storage == 'float32':
        return {'data': x.copy()}      # never alias the caller's array or tensor
    if storage == 'float16':
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > FLOAT16_MAX:
            raise InputError(
                f'latent magnitude {peak:.6g} exceeds the float16 range (+-{FLOAT16_MAX:g}); '
                "use replay storage 'float32' or 'uint8'")
        return {'data': x.astype(np.float16)}
    return _encode_uint8(x)


def _encode_uint8(x: np.ndarray) -> Record:
    """Per-pattern, per-channel affine quantisation of validated float32 latents."""
    k, channels = x.shape[:2]
    if k == 0:
        return {'data': np.zeros(x.shape, np.uint8),
                'scale': np.zeros((0, channels), np.float32),
                'offset': np.zeros((0, channels), np.float32)}
    flat = x.reshape(k, channels, -1)
    low = flat.min(axis=2)
    high = flat.max(axis=2)
    span = high.astype(np.float64) - low.astype(np.float64)
    scale = (span / UINT8_LEVELS).astype(np.float32)
    # Rounding the scale to float32 may have made it a hair too small, which would push the
    # maximum past code 255; step such scales up by one float32 ulp.
    short = scale.astype(np.float64) * UINT8_LEVELS < span
    scale[short] = np.nextafter(scale[short], np.float32(np.inf))
    scale64 = scale.astype(np.float64)[:, :, None]
    safe = np.where(scale64 > 0.0, scale64, 1.0)          # constant channel: code 0
    codes = np.rint((flat - low.astype(np.float64)[:, :, None]) / safe)
    codes = np.clip(codes, 0, UINT8_LEVELS).astype(np.uint8)
    return {'data': codes.reshape(x.shape), 'scale': scale, 'offset': low.copy()}


def check_record(record: Mapping[str, Any], storage: str,
                 latent_shape: Optional[Sequence[int]] = None) -> int:
    """Check a record's fields, dtypes and shapes; return its pattern count k."""
    storage = check_storage(storage)
    if not isinstance(record, Mapping):
        raise InputError(f'a record must be a mapping of arrays, got {type(record).__name__}')
    data = record.get('data')
    if not isinstance(data, np.ndarray) or data.ndim != 4:
        raise InputError("record field 'data' must be a numpy array [k, C, H, W]")
    shape = check_latent_shape(data.shape[1:] if latent_shape is None else latent_shape)
    fields = record_fields(storage, shape)
    if set(record) != set(fields):
        raise InputError(
            f'{storage} record needs fields {sorted(fields)}, got {sorted(record)}')
    count = data.shape[0]
    for name, (dtype, row) in fields.items():
        value = record[name]
        if not isinstance(value, np.ndarray) or value.dtype != dtype \
                or value.shape != (count,) + row:
            got = (value.dtype, value.shape) if isinstance(value, np.ndarray) else type(value)
            raise InputError(
                f'record field {name!r} must be {dtype} of shape {(count,) + row}, got {got}')
    return count


def decode(record: Mapping[str, Any], storage: str) -> np.ndarray:
    """Decode a record back to float32 latents ``[k, C, H, W]``."""
    check_record(record, storage)
    data = record['data']
    if storage == 'float32':
        return np.array(data, dtype=np.float32, copy=True)
    if storage == 'float16':
        return data.astype(np.float32)
    scale = record['scale'].astype(np.float64)[:, :, None, None]
    offset = record['offset'].astype(np.float64)[:, :, None, None]
    # float64 arithmetic, one rounding to float32: keeps the error bound at scale / 2.
    # Done in blocks of patterns through one small float64 buffer (4x faster than whole).
    out = np.empty(data.shape, np.float32)
    step = max(1, _DECODE_BLOCK_ELEMENTS // max(1, int(np.prod(data.shape[1:]))))
    work = np.empty((min(step, data.shape[0]),) + data.shape[1:], np.float64)
    for start in range(0, data.shape[0], step):
        stop = min(start + step, data.shape[0])
        block = work[:stop - start]
        np.multiply(data[start:stop], scale[start:stop], out=block)
        block += offset[start:stop]
        out[start:stop] = block
    return out
