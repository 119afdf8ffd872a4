"""How a learning step splits new and replayed patterns into minibatches (paper rule).

With ``n`` new patterns, ``R`` patterns in the replay memory and minibatch size ``B``, the
reference code runs ``(n + R) // B`` iterations per epoch, each holding
``n // ((n + R) // B)`` new patterns and ``B`` minus that replayed ones (21 + 107 for
n = 300, R = 1,500, B = 128). Two small departures keep short robot episodes useful: at
least one iteration always runs, and the ``n mod iterations`` new patterns the literal rule
would drop each epoch are spread one each over the first minibatches (with one fewer
replayed pattern there), so every new frame is seen every epoch. With an empty memory the
new patterns alone are cut into ``ceil(n / B)`` near-equal minibatches.
"""

from dataclasses import dataclass
from typing import List

import numpy as np


@dataclass(frozen=True)
class MinibatchPlan:
    """Per-epoch schedule: ``new[k]`` new and ``replay[k]`` replayed patterns in minibatch k."""

    new: List[int]
    replay: List[int]

    @property
    def iterations(self) -> int:
        """Minibatches per epoch."""
        return len(self.new)

    @property
    def new_per_minibatch(self) -> int:
        """The paper's count of new patterns per minibatch (the smallest share)."""
        return min(self.new)

    @property
    def replay_per_minibatch(self) -> int:
        """The paper's count of replayed patterns per minibatch."""
        return max(self.replay)


def plan_minibatches(n_new: int, n_memory: int, minibatch_size: int) -> MinibatchPlan:
    """Plan one epoch of ``n_new`` new patterns mixed with a memory of ``n_memory``."""
    if n_new <= 0:
        raise ValueError('a learning step needs at least one new pattern')
    if minibatch_size < 2:
        raise ValueError('minibatch_size must be at least 2')
    if n_memory <= 0:
        iterations = -(-n_new // minibatch_size)
        sizes = [len(a) for a in np.array_split(np.arange(n_new), iterations)]
        return MinibatchPlan(new=sizes, replay=[0] * iterations)
    iterations = max(1, (n_new + n_memory) // minibatch_size)
    base = n_new // iterations
    if base == 0:
        # fewer new patterns than iterations: one per minibatch, as many minibatches
        iterations = n_new
        base = 1
    extra = n_new - base * iterations
    new = [base + (1 if k < extra else 0) for k in range(iterations)]
    replay = [max(0, min(minibatch_size - k, n_memory)) for k in new]
    return MinibatchPlan(new=new, replay=replay)
