"""Fast inference of the trained upper part, rebuilt after every learning step.

Between two learning steps the upper part (eval mode: Batch Renormalization is a fixed
affine map, the CWR* head a fixed linear layer over the known classes) is a fixed function
of the latent, so predictions can run it in ONNX Runtime, about 3x faster than eager
PyTorch at batch 1 on a CPU. :class:`UpperInferenceRuntime` exports one trained model
(about 0.2 s), checks the graph against eager PyTorch and is thrown away with that model;
the learner builds a new one for the model each step swaps in. The graph lives in memory
only: nothing is cached on disk, since the weights change at every step.
"""

import copy
import logging
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .frozen_runtime import check_against_eager, export_onnx, open_session

_LOG = logging.getLogger(__name__)


class UpperInferenceRuntime:
    """Logits of one eval-mode upper part for float32 latents ``[N, C, H, W]`` (any N >= 1).

    Building raises ``RuntimeError`` (or the exporter's / ONNX Runtime's error) when the
    export, the session or the numeric check fails; callers fall back to eager PyTorch.
    ``threads`` sets ONNX Runtime's intra-op threads (0 = its default). Calls from several
    threads at once are safe.
    """

    #: Max abs difference between this runtime's and eager PyTorch's logits, relative to
    #: the largest magnitude of the eager logits (checked when the runtime is built).
    TOLERANCE: float = 1e-4

    def __init__(self, upper: nn.Module, latent_shape: Sequence[int], threads: int = 0):
        """Export ``upper`` (copied, eval mode, on the CPU) and open a session for it."""
        self.latent_shape = tuple(int(v) for v in latent_shape)
        module = copy.deepcopy(upper).cpu().eval()
        module = module.to(memory_format=torch.contiguous_format)
        start = time.perf_counter()
        data, _, exporter = export_onnx(module, torch.zeros(2, *self.latent_shape))
        self._session = open_session(data, threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        expected = check_against_eager(self._session, module, (1, *self.latent_shape),
                                       self.TOLERANCE, 'the upper part')
        self.classes = int(expected.shape[1])
        self.build_seconds = time.perf_counter() - start
        _LOG.debug('upper part in ONNX Runtime: %d classes, built in %.2f s (%s)',
                   self.classes, self.build_seconds, exporter)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Return float32 logits ``[N, classes]`` on the CPU."""
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.latent_shape \
                or latents.shape[0] < 1:
            raise InputError(f'latents must be N x {self.latent_shape}, '
                             f'got {tuple(latents.shape)}')
        array = np.ascontiguousarray(latents.detach().to('cpu', torch.float32).numpy())
        return torch.from_numpy(self._session.run([self._output], {self._input: array})[0])


__all__ = ['UpperInferenceRuntime']
