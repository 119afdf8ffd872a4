"""Batch Renormalization (Ioffe 2017) as used by AR1*/Latent Replay, and BN -> BRN conversion.

In training mode a batch is normalised with its own statistics, then corrected towards the
running ones::

    sigma_B = sqrt(var_B + eps),  sigma = sqrt(running_var + eps)
    r = clip(sigma_B / sigma, 1/r_max, r_max)          (no gradient)
    d = clip((mu_B - running_mean) / sigma, -d_max, d_max)  (no gradient)
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta

and the running statistics move by ``momentum`` towards the batch's (``momentum`` is the
weight of the new batch, as in the reference code). ``r_max`` and ``d_max`` ramp up by
``ramp_step`` per training sample until they reach their limits (the reference's batch-0
schedule); later learning steps fix them. Every quantity is a registered buffer, so
``state_dict`` keeps the running statistics and the schedule, and a checkpoint of a
converted model loads into another. In eval mode the layer is exactly BatchNorm's affine op
(``F.batch_norm`` with the running statistics), so inference costs the same as BN and
exports to ONNX as a BatchNormalization node.
"""

from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


class BatchRenorm2d(nn.Module):
    """Batch Renormalization over the channel axis of a 4-D input."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.01,
                 r_max: float = 1.0, d_max: float = 0.0, r_max_limit: float = 1.25,
                 d_max_limit: float = 0.5, ramp_step: float = 0.0) -> None:
        """Create the layer; ``r_max``/``d_max`` start values ramp to their limits."""
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))
        self.register_buffer('momentum', torch.tensor(float(momentum), dtype=torch.float64))
        self.register_buffer('r_max', torch.tensor(float(r_max), dtype=torch.float64))
        self.register_buffer('d_max', torch.tensor(float(d_max), dtype=torch.float64))
        self.register_buffer('r_max_limit', torch.tensor(float(r_max_limit), dtype=torch.float64))
        self.register_buffer('d_max_limit', torch.tensor(float(d_max_limit), dtype=torch.float64))
        self.register_buffer('ramp_step', torch.tensor(float(ramp_step), dtype=torch.float64))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, **kwargs) -> 'BatchRenorm2d':
        """Build a BRN layer carrying ``bn``'s affine parameters and running statistics."""
        layer = cls(bn.num_features, eps=bn.eps, **kwargs)
        with torch.no_grad():
            if bn.affine:
                layer.weight.copy_(bn.weight)
                layer.bias.copy_(bn.bias)
            if bn.running_mean is not None:
                layer.running_mean.copy_(bn.running_mean)
                layer.running_var.copy_(bn.running_var)
        layer.weight.requires_grad_(bn.weight.requires_grad if bn.affine else True)
        layer.bias.requires_grad_(bn.bias.requires_grad if bn.affine else True)
        return layer.train(bn.training)

    def set_schedule(self, momentum: float, r_max: Optional[float] = None,
                     d_max: Optional[float] = None, ramp_step: Optional[float] = None) -> None:
        """Change the running-statistics momentum and, optionally, the clip schedule."""
        self.momentum.fill_(float(momentum))
        if r_max is not None:
            self.r_max.fill_(float(r_max))
        if d_max is not None:
            self.d_max.fill_(float(d_max))
        if ramp_step is not None:
            self.ramp_step.fill_(float(ramp_step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W)."""
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        if x.dim() != 4:
            raise ValueError(f'BatchRenorm2d expects a 4-D input, got shape {tuple(x.shape)}')
        r_max = float(self.r_max)
        d_max = float(self.d_max)
        with torch.no_grad():
            # batch statistics through BatchNorm's fused kernel (momentum 1 writes the batch
            # mean and the unbiased batch variance into the scratch buffers)
            batch_mean = torch.zeros_like(self.running_mean)
            unbiased_var = torch.ones_like(self.running_var)
            F.batch_norm(x.detach(), batch_mean, unbiased_var, None, None, True, 1.0, self.eps)
            n = x.numel() / x.size(1)
            batch_var = unbiased_var * ((n - 1.0) / n) if n > 1 else torch.zeros_like(
                unbiased_var)
            batch_std = torch.sqrt(batch_var + self.eps)
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (batch_std / running_std).clamp(1.0 / r_max, r_max)
            d = ((batch_mean - self.running_mean) / running_std).clamp(-d_max, d_max)
        # gamma * (x_hat_B * r + d) + beta == batch_norm(x) with weight gamma*r and bias
        # gamma*d + beta; r and d carry no gradient, x_hat_B does (through the batch stats)
        out = F.batch_norm(x, None, None, self.weight * r, self.weight * d + self.bias,
                           True, 0.0, self.eps)
        with torch.no_grad():
            momentum = float(self.momentum)
            self.running_mean.add_(momentum * (batch_mean - self.running_mean))
            self.running_var.add_(momentum * (unbiased_var - self.running_var))
            self.num_batches_tracked.add_(1)
            step = float(self.ramp_step) * x.size(0)
            if step > 0.0:
                self.r_max.fill_(min(r_max + step, float(self.r_max_limit)))
                self.d_max.fill_(min(d_max + step, float(self.d_max_limit)))
        return out

    def extra_repr(self) -> str:
        """Describe the layer's schedule."""
        return (f'{self.num_features}, eps={self.eps}, momentum={float(self.momentum):g}, '
                f'r_max={float(self.r_max):.4g}/{float(self.r_max_limit):g}, '
                f'd_max={float(self.d_max):.4g}/{float(self.d_max_limit):g}')


def convert_batchnorm_to_brn(module: nn.Module, **kwargs) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by :class:`BatchRenorm2d`.

    Returns ``module`` (or the replacement, when ``module`` itself is a BatchNorm2d).
    """
    if isinstance(module, nn.BatchNorm2d):
        return BatchRenorm2d.from_batchnorm(module, **kwargs)
    for name, child in list(module.named_children()):
        setattr(module, name, convert_batchnorm_to_brn(child, **kwargs))
    return module


def brn_layers(module: nn.Module):
    """Yield every :class:`BatchRenorm2d` inside ``module``."""
    return (m for m in module.modules() if isinstance(m, BatchRenorm2d))


def set_brn_schedule(module: nn.Module, momentum: float, r_max: Optional[float] = None,
                     d_max: Optional[float] = None, ramp_step: Optional[float] = None) -> None:
    """Apply :meth:`BatchRenorm2d.set_schedule` to every BRN layer in ``module``."""
    for layer in brn_layers(module):
        layer.set_schedule(momentum, r_max=r_max, d_max=d_max, ramp_step=ramp_step)
