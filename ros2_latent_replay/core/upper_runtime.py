"""Fast inference of the trained upper part, rebuilt after every learning step.

Between two learning steps the upper part (eval mode: Batch Renormalization is a fixed
affine map, the CWR* head a fixed linear layer over the known classes) is a fixed function
of the latent, so predictions can run it in ONNX Runtime, about 3x faster than eager
PyTorch at batch 1 on a CPU. :class:`UpperInferenceRuntime` exports one trained model
(about 0.2 s), checks the graph against eager PyTorch and is thrown away with that model;
the learner builds a new one for the model each step swaps in. The graph lives in memory
only: nothing is cached on disk, since the weights change at every step.

With ``precision='int8'`` the graph's convolutions are quantized as well (int8 weights,
uint8 activations calibrated on latents like the ones to classify: the learner passes
latents of its replay memory; ~0.5-0.9 s more per step): their weights take a quarter of the
memory, which is what a one-frame call waits for, and the logits stay close to float32
ones (checked on the calibration latents).
"""

import copy
import logging
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import UPPER_PRECISIONS
from .errors import InputError
from .frozen_runtime import check_against_eager, export_onnx, open_session
from .lower_quantization import check_int8_agreement, quantize_graph

_LOG = logging.getLogger(__name__)


class UpperInferenceRuntime:
    """Logits of one eval-mode upper part for float32 latents ``[N, C, H, W]`` (any N >= 1).

    Building raises ``RuntimeError`` (or the exporter's / ONNX Runtime's error) when the
    export, the quantization, the session or the numeric check fails (the learner then
    tries float32, then eager PyTorch).
    ``threads`` sets ONNX Runtime's intra-op threads (0 = its default). Calls from several
    threads at once are safe.
    """

    #: Max abs difference between this runtime's and eager PyTorch's logits, relative to
    #: the largest magnitude of the eager logits (checked when the runtime is built).
    TOLERANCE: float = 1e-4
    #: int8: the lowest per-latent cosine similarity between its logits and eager float32
    #: logits accepted on the calibration latents.
    INT8_MIN_COSINE: float = 0.98
    #: int8: the operators quantized. The convolutions hold almost all weights and work;
    #: the pooled features and the head's logits stay float32, so classes whose logits are
    #: close (as they often are after CWR* consolidation) keep their order.
    INT8_OPS: Tuple[str, ...] = ('Conv',)

    def __init__(self, upper: nn.Module, latent_shape: Sequence[int], threads: int = 0,
                 precision: str = 'float32', calibration: Optional[np.ndarray] = None,
                 graph: Optional[bytes] = None, keep_graph: bool = False):
        """Export ``upper`` (copied, eval mode, on the CPU) and open a session for it.

        ``precision='int8'`` needs ``calibration``: float32 latents ``[N >= 1, C, H, W]``
        like the ones to classify. ``graph``: the float32 graph of this same ``upper``
        (:attr:`graph` of its float32 runtime), which saves exporting it again.
        ``keep_graph``: a float32 runtime keeps its graph in :attr:`graph` for that.
        """
        if precision not in UPPER_PRECISIONS:
            raise ValueError(f'unknown upper precision {precision!r}; valid: '
                             f'{", ".join(UPPER_PRECISIONS)}')
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.precision = precision
        self.min_cosine: Optional[float] = None     # int8: measured on the calibration latents
        module = copy.deepcopy(upper).cpu().eval()
        module = module.to(memory_format=torch.contiguous_format)
        start = time.perf_counter()
        if graph is None:
            data, _, exporter = export_onnx(module, torch.zeros(2, *self.latent_shape))
        else:
            data, exporter = graph, 'given graph'
        #: the float32 graph (float32 runtimes built with ``keep_graph`` only)
        self.graph: Optional[bytes] = data if precision == 'float32' and keep_graph else None
        if precision == 'int8':
            samples = self._calibration(calibration)
            data = quantize_graph(data, samples, preprocess=False, op_types=self.INT8_OPS)
            self._session = open_session(data, threads)
            expected = self._check_int8(module, samples)
        else:
            self._session = open_session(data, threads)
            expected = check_against_eager(self._session, module, (1, *self.latent_shape),
                                           self.TOLERANCE, 'the upper part')
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self.classes = int(expected.shape[1])
        self.build_seconds = time.perf_counter() - start
        _LOG.debug('upper part in ONNX Runtime (%s): %d classes, built in %.2f s (%s)',
                   precision, self.classes, self.build_seconds, exporter)

    def _calibration(self, calibration: Optional[np.ndarray]) -> np.ndarray:
        if calibration is None or len(calibration) == 0:
            raise RuntimeError('an int8 upper part needs calibration latents')
        samples = np.ascontiguousarray(np.asarray(calibration, dtype=np.float32))
        if samples.shape[1:] != self.latent_shape or not np.isfinite(samples).all():
            raise RuntimeError(f'calibration latents must be finite N x {self.latent_shape}, '
                               f'got {samples.shape}')
        return samples

    def _check_int8(self, module: nn.Module, samples: np.ndarray) -> np.ndarray:
        """Compare the int8 graph's logits with eager float32 ones; return the eager ones."""
        # a model of one class has all-zero logits (CWR* centres them): equal, not opposite
        self.min_cosine, expected = check_int8_agreement(
            self._session, module, samples, self.INT8_MIN_COSINE, 'the upper part (logits)',
            zeros_agree=True)
        return expected

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Return float32 logits ``[N, classes]`` on the CPU."""
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.latent_shape \
                or latents.shape[0] < 1:
            raise InputError(f'latents must be N x {self.latent_shape}, '
                             f'got {tuple(latents.shape)}')
        array = np.ascontiguousarray(latents.detach().to('cpu', torch.float32).numpy())
        return torch.from_numpy(self._session.run([self._output], {self._input: array})[0])


__all__ = ['UPPER_PRECISIONS', 'UpperInferenceRuntime']
