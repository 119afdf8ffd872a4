"""Synaptic Intelligence (Zenke et al. 2017) on the shared weights, as AR1* uses it.

Over a learning step every optimiser update adds ``grad * (theta_new - theta_old)`` to a
per-weight path integral (negative when the update lowered the loss). At the end of the
step the importance accumulates ``c * path / ((theta_end - theta_start)^2 + eps)`` and the
penalty weights are ``F = clip(-importance, 0, clip)`` (AR1* clips at 0.001); the anchor
moves to ``theta_end``. The penalty during later steps is
``lambda / 2 * sum(F * (theta - anchor)^2)``.
"""

from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn


class SynapticIntelligence(nn.Module):
    """Path-integral importance and quadratic penalty over a fixed set of parameters."""

    def __init__(self, named_params: Iterable[Tuple[str, nn.Parameter]], c: float = 0.0015,
                 clip: float = 0.001, eps: float = 1e-7) -> None:
        """Track the given parameters (names are only used as buffer keys)."""
        super().__init__()
        self.c = float(c)
        self.clip = float(clip)
        self.eps = float(eps)
        self._names: List[str] = []
        for name, param in named_params:
            key = name.replace('.', '__')
            self._names.append(key)
            data = param.detach()
            self.register_buffer(f'anchor__{key}', data.clone())
            self.register_buffer(f'importance__{key}', torch.zeros_like(data))
            self.register_buffer(f'penalty__{key}', torch.zeros_like(data))
        self._start: Dict[str, torch.Tensor] = {}
        self._path: Dict[str, torch.Tensor] = {}
        self._before: Dict[str, torch.Tensor] = {}

    def _buffer(self, kind: str, key: str) -> torch.Tensor:
        return getattr(self, f'{kind}__{key}')

    def begin_step(self, params: List[nn.Parameter]) -> None:
        """Remember the weights at the start of a learning step and reset the path."""
        self._start = {k: p.detach().clone() for k, p in zip(self._names, params)}
        self._path = {k: torch.zeros_like(p) for k, p in zip(self._names, params)}

    def before_update(self, params: List[nn.Parameter]) -> None:
        """Call right before ``optimizer.step()``."""
        self._before = {k: p.detach().clone() for k, p in zip(self._names, params)}

    def after_update(self, params: List[nn.Parameter]) -> None:
        """Call right after ``optimizer.step()`` (gradients still in ``.grad``)."""
        for key, param in zip(self._names, params):
            if param.grad is not None:
                self._path[key].add_(param.grad.detach() * (param.detach() - self._before[key]))

    def penalty(self, params: List[nn.Parameter], strength: float) -> torch.Tensor:
        """``strength / 2 * sum(F * (theta - anchor)^2)``."""
        total = params[0].new_zeros(())
        for key, param in zip(self._names, params):
            total = total + (self._buffer('penalty', key)
                             * (param - self._buffer('anchor', key)) ** 2).sum()
        return 0.5 * strength * total

    @torch.no_grad()
    def end_step(self, params: List[nn.Parameter]) -> None:
        """Fold the step's path integral into the importance; move the anchor."""
        for key, param in zip(self._names, params):
            delta = param.detach() - self._start[key]
            importance = self._buffer('importance', key)
            importance.add_(self.c * self._path[key] / (delta ** 2 + self.eps))
            self._buffer('penalty', key).copy_((-importance).clamp(0.0, self.clip))
            self._buffer('anchor', key).copy_(param.detach())
        self._start, self._path, self._before = {}, {}, {}
