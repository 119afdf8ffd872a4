"""Streaming heads on frozen pretrained features: nearest class mean and streaming LDA.

Both learn in one pass over the stream with no epochs and no replay, on the pooled features
of the frozen pretrained backbone (EfficientNet-Lite0: 1,280 values per frame).

* :class:`NearestClassMean`: running mean per class; prediction by cosine similarity to
  the class means (features and means L2-normalised).
* :class:`StreamingLDA`: running class means plus one shared covariance matrix updated
  online (the streaming update of Hayes & Kanan's Deep SLDA, 2020); prediction by the
  linear discriminant ``W = (S + shrinkage I)^-1 mu`` with bias ``-0.5 mu^T W``.
"""

import numpy as np


class NearestClassMean:
    """Cosine nearest class mean, updated one batch at a time."""

    def __init__(self, dim: int, max_classes: int):
        """Start with no classes."""
        self.sums = np.zeros((max_classes, dim))
        self.counts = np.zeros(max_classes)

    @staticmethod
    def _norm(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit_batch(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add a batch of features ``x`` with integer labels ``y``."""
        x = self._norm(np.asarray(x, dtype=np.float64))
        np.add.at(self.sums, y, x)
        np.add.at(self.counts, y, 1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels (only classes seen so far compete)."""
        seen = self.counts > 0
        means = self._norm(self.sums[seen] / self.counts[seen, None])
        scores = self._norm(np.asarray(x, dtype=np.float64)) @ means.T
        return np.flatnonzero(seen)[scores.argmax(1)]


class StreamingLDA:
    """Streaming linear discriminant analysis with a shared covariance."""

    def __init__(self, dim: int, max_classes: int, shrinkage: float = 1e-4):
        """Start with no classes; ``shrinkage`` is added to the covariance's diagonal."""
        self.means = np.zeros((max_classes, dim))
        self.counts = np.zeros(max_classes)
        self.cov = np.zeros((dim, dim))
        self.seen = 0
        self.shrinkage = shrinkage

    def fit_batch(self, x: np.ndarray, y: np.ndarray) -> None:
        """Update with each sample in turn (the streaming rule)."""
        x = np.asarray(x, dtype=np.float64)
        for xi, yi in zip(x, y):
            delta = xi - self.means[yi]
            self.cov = (self.seen * self.cov
                        + np.outer(delta, delta) * self.counts[yi] / (self.counts[yi] + 1)
                        ) / (self.seen + 1)
            self.means[yi] += delta / (self.counts[yi] + 1)
            self.counts[yi] += 1
            self.seen += 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels (only classes seen so far compete)."""
        seen = self.counts > 0
        mu = self.means[seen]
        precision = np.linalg.inv((1 - self.shrinkage) * self.cov
                                  + self.shrinkage * np.eye(self.cov.shape[0]))
        weights = precision @ mu.T
        bias = -0.5 * np.sum(mu.T * weights, axis=0)
        scores = np.asarray(x, dtype=np.float64) @ weights + bias
        return np.flatnonzero(seen)[scores.argmax(1)]
