"""An 8-bit integer version of the frozen lower part's ONNX graph (and the tool for others).

With the lower part frozen, the same fixed function encodes every training frame and
every frame to classify, so it may as well be a cheaper function. :func:`quantize_lower`
turns the float32 graph of :class:`~.frozen_runtime.FrozenLowerRuntime` into an ONNX
Runtime static-quantized graph: int8 weights per output channel, uint8 activations with
ranges calibrated once (min/max), operators fused as ``QLinearConv``. On a 2-core AVX-512
VNNI CPU it computes EfficientNet-Lite0's lower part about twice as fast as float32; on an
AVX2-only one ~1.2x (the exact path :func:`~.frozen_runtime.open_session` asks for).

Calibration needs images but no data set: :func:`calibration_images` draws a fixed,
seeded set of smooth random colour fields (low-resolution noise upsampled bicubically, at
several scales, plus a little pixel noise). The graph is therefore a deterministic
function of the float32 graph and the input size, and can be cached like it. On the
cluttered COIL-100 scenario (run 0) latents from this graph kept a mean cosine similarity
of 0.991 with the float32 latents, and nearest-class-mean accuracy on the pooled features
moved from 64.7% to 64.9% (calibrating on 200 real frames instead: 65.1%).

The latents differ from float32 ones, so a learner keeps to one precision for its whole
life: the precision is part of the configuration a checkpoint must match.

:func:`quantize_graph` is the same quantization for any one-input graph and calibration
set; the int8 upper part for predictions (:mod:`.upper_runtime`) uses it on latents.
"""

import logging
import os
import tempfile
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: Changes whenever the calibration set or the quantization settings change, so cached
#: graphs made with other ones are not reused.
QUANTIZATION_VERSION = 'int8-qoperator-perchannel-minmax-smooth64-v1'

#: Number of calibration images and the seed they are drawn with.
CALIBRATION_IMAGES = 64
CALIBRATION_SEED = 0


def calibration_images(count: int, input_size: int, seed: int,
                       mean: Sequence[float] = (0.5, 0.5, 0.5),
                       std: Sequence[float] = (0.5, 0.5, 0.5)) -> np.ndarray:
    """Return ``count`` normalised float32 images ``[count, 3, S, S]``, same for same args.

    Image ``i`` is a random colour field of ``2 ** (1 + i % 5)`` squared cells upsampled to
    ``S x S`` (from two large blobs to fine texture), plus Gaussian pixel noise of 0.05,
    clamped to [0, 1] and normalised with ``mean`` / ``std``.
    """
    generator = torch.Generator().manual_seed(seed)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    images = []
    for index in range(count):
        cells = 2 ** (1 + index % 5)
        low = torch.rand(1, 3, cells, cells, generator=generator)
        field = F.interpolate(low, size=(input_size, input_size), mode='bicubic',
                              align_corners=False)[0]
        field = field + 0.05 * torch.randn(field.shape, generator=generator)
        images.append((field.clamp(0.0, 1.0) - mean_t) / std_t)
    return torch.stack(images).numpy().astype(np.float32)


class _Batches:
    """Feed calibration images to ONNX Runtime's calibrator, 16 at a time."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._input_name = input_name
        self._images = images
        self._start = 0

    def get_next(self):
        if self._start >= len(self._images):
            return None
        batch = self._images[self._start:self._start + 16]
        self._start += 16
        return {self._input_name: batch}

    def rewind(self) -> None:
        self._start = 0


class _QuietQuantizer(logging.Filter):
    """Drop the per-weight INFO/WARNING lines ONNX Runtime's quantizer logs on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or \
            'onnxruntime' not in record.pathname.replace(os.sep, '/')


def quantize_lower(data: bytes, input_size: int, mean: Sequence[float],
                   std: Sequence[float],
                   input_map: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> bytes:
    """Return the int8 graph of the float32 lower-part graph ``data`` (serialised ONNX).

    ``input_map`` turns the normalised calibration images into what the graph takes, for
    a part that starts after the first layers (the trained layers of a slowed lower part
    split by ``lower_frozen_until`` take the frozen layers' activations).
    Needs the ``onnx`` package and ONNX Runtime's quantization tools; raises their errors
    (ImportError included) when quantization is not possible.
    """
    images = calibration_images(CALIBRATION_IMAGES, input_size, CALIBRATION_SEED, mean, std)
    if input_map is not None:
        images = input_map(images)
    return quantize_graph(data, images, preprocess=True)


def quantize_graph(data: bytes, samples: np.ndarray, preprocess: bool = True,
                   op_types: Optional[Sequence[str]] = None) -> bytes:
    """Return an int8 version of the one-input float32 graph ``data``, calibrated on ``samples``.

    The settings :data:`QUANTIZATION_VERSION` names: int8 weights per output channel, uint8
    activations with min/max ranges over ``samples`` (float32, the graph's input layout),
    ``QLinear*`` operators. ``preprocess`` runs ONNX Runtime's shape inference and graph
    clean-up first (worth it for a deep graph, ~1 s). ``op_types`` (e.g. ``['Conv']``)
    quantizes only those operators and leaves the rest float32 (default: all it can).
    ONNX Runtime's quantizer logs every weight on the root logger and its sessions warn
    about unused constants on stderr; both are silenced while it runs (ONNX Runtime's
    default log level is back at WARNING after).
    """
    import onnx
    import onnxruntime
    import onnxruntime.quantization  # noqa: F401  (fail before any work when it is missing)

    model = onnx.load_from_string(data)
    input_name = model.graph.input[0].name
    quiet = _QuietQuantizer()
    root = logging.getLogger()
    root.addFilter(quiet)
    onnxruntime.set_default_logger_severity(3)
    try:
        return _quantize_files(data, input_name, np.ascontiguousarray(samples, np.float32),
                               preprocess, op_types)
    finally:
        onnxruntime.set_default_logger_severity(2)
        root.removeFilter(quiet)


def _quantize_files(data: bytes, input_name: str, images: np.ndarray, preprocess: bool,
                    op_types: Optional[Sequence[str]]) -> bytes:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Batches, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix='int8-') as work:
        source = os.path.join(work, 'float32.onnx')
        prepared = os.path.join(work, 'prepared.onnx')
        target = os.path.join(work, 'int8.onnx')
        with open(source, 'wb') as stream:
            stream.write(data)
        if preprocess:
            quant_pre_process(source, prepared, skip_symbolic_shape=True)
        else:
            prepared = source
        quantize_static(prepared, target, Reader(input_name, images),
                        quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(op_types) if op_types else None)
        with open(target, 'rb') as stream:
            return stream.read()


def cosine_similarities(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two ``[N, ...]`` arrays."""
    a = got.reshape(len(got), -1).astype(np.float64)
    b = expected.reshape(len(expected), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def check_int8_agreement(session: Any, module: Any, samples: np.ndarray, min_cosine: float,
                         part: str, zeros_agree: bool = False) -> Tuple[float, np.ndarray]:
    """Compare an int8 ONNX Runtime ``session`` with the eager float32 ``module`` on ``samples``.

    Returns the lowest per-sample cosine similarity of their outputs and the eager outputs;
    raises ``RuntimeError`` naming ``part`` when the shapes differ or the lowest cosine is
    under ``min_cosine``. ``zeros_agree``: two all-zero outputs count as equal (cosine 1).
    """
    with torch.no_grad():
        expected = module(torch.from_numpy(samples)).numpy()
    got = session.run([session.get_outputs()[0].name],
                      {session.get_inputs()[0].name: samples})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f'int8 graph of {part} gives shape {got.shape}, '
                           f'eager {expected.shape}')
    cosines = cosine_similarities(got, expected)
    if zeros_agree:
        both_zero = (np.abs(got).reshape(len(got), -1).max(axis=1) == 0) \
            & (np.abs(expected).reshape(len(expected), -1).max(axis=1) == 0)
        cosines = np.where(both_zero, 1.0, cosines)
    lowest = float(cosines.min())
    if not lowest >= min_cosine:
        raise RuntimeError(f'int8 graph of {part} is too far from float32: cosine '
                           f'similarity {lowest:.4f} < {min_cosine}')
    return lowest, expected


__all__ = ['CALIBRATION_IMAGES', 'CALIBRATION_SEED', 'QUANTIZATION_VERSION',
           'calibration_images', 'check_int8_agreement', 'cosine_similarities',
           'quantize_graph', 'quantize_lower']
