"""CWR* output layer: a bias-free linear head with consolidated per-class weights.

Before a learning step the training weights are zeroed and the consolidated weights of the
classes present in the step (new data plus replay) are loaded. After training, the present
classes' weights are mean-shifted by their global mean and merged::

    w_past = sqrt(past[c] / cur[c])
    cw[c]  = (cw[c] * w_past + w[c]) / (w_past + 1)     (classes seen before)
    cw[c]  = w[c]                                        (new classes)
    past[c] += cur[c]

where ``cur[c]`` counts the class-c patterns of the step including replay. Inference uses the
consolidated weights. All of it lives in the module's ``state_dict``. The head is sized for
``max_classes`` from the start; ``num_active`` classes (those taught so far) take part in
the output, so the open class set grows without reshaping tensors.
"""

from typing import Sequence

import torch
from torch import nn


class CWRHead(nn.Module):
    """Bias-free linear classifier with CWR* consolidation."""

    def __init__(self, in_features: int, max_classes: int) -> None:
        """Create a head for up to ``max_classes`` classes, none active yet."""
        super().__init__()
        self.in_features = in_features
        self.max_classes = max_classes
        self.weight = nn.Parameter(torch.zeros(max_classes, in_features))
        self.register_buffer('consolidated', torch.zeros(max_classes, in_features))
        self.register_buffer('past_counts', torch.zeros(max_classes, dtype=torch.float64))
        self.register_buffer('num_active', torch.tensor(0, dtype=torch.long))

    @property
    def active(self) -> int:
        """Number of classes taking part in the output."""
        return int(self.num_active)

    def grow(self, num_classes: int) -> None:
        """Activate classes up to ``num_classes`` (never shrinks)."""
        if num_classes > self.max_classes:
            raise ValueError(f'head holds at most {self.max_classes} classes, '
                             f'asked for {num_classes}')
        self.num_active.fill_(max(self.active, int(num_classes)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the active classes, shape (N, active)."""
        return features @ self.weight[:self.active].t()

    @torch.no_grad()
    def prepare_step(self, present: Sequence[int]) -> None:
        """Zero the training weights, then load the consolidated ones of ``present``."""
        self.weight.zero_()
        index = torch.as_tensor(list(present), dtype=torch.long)
        if index.numel():
            self.weight[index] = self.consolidated[index]

    @torch.no_grad()
    def consolidate(self, present: Sequence[int], counts: Sequence[float]) -> None:
        """Mean-shift and merge the trained weights of ``present`` into the consolidated ones.

        ``counts[k]`` is the number of patterns of class ``present[k]`` in this step,
        replayed ones included.
        """
        index = torch.as_tensor(list(present), dtype=torch.long)
        if not index.numel():
            return
        cur = torch.as_tensor(list(counts), dtype=torch.float64)
        if cur.shape != index.shape or bool((cur <= 0).any()):
            raise ValueError('every present class needs a positive pattern count')
        trained = self.weight[index].to(torch.float64)
        shifted = trained - trained.mean(dim=0, keepdim=True)
        past = self.past_counts[index]
        w_past = torch.sqrt(past / cur).unsqueeze(1)
        old = self.consolidated[index].to(torch.float64)
        merged = torch.where(past.unsqueeze(1) > 0, (old * w_past + shifted) / (w_past + 1.0),
                             shifted)
        self.consolidated[index] = merged.to(self.consolidated.dtype)
        self.past_counts[index] = past + cur

    @torch.no_grad()
    def use_consolidated(self) -> None:
        """Copy the consolidated weights into the layer for inference."""
        self.weight.copy_(self.consolidated)
