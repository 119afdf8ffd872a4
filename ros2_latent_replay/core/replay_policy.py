"""Which patterns of a new batch enter the replay memory, and which slots they take.

A policy's :meth:`select` returns ``(indices, slots)``: ``indices`` into the new batch and,
element by element, the memory slot each one is written to. Slots below ``fill`` replace
what is there; slots at or above ``fill`` are free slots and are exactly
``fill, fill + 1, ...``, so the memory always occupies ``0 .. fill - 1``. Policies are pure
functions of their arguments and ``rng``: the same generator state gives the same choice.

``paper``
    The literal rule of Pellegrini et al. (2020) and its reference code: after batch ``i``
    (from 0), ``h = min(M // (i + 1), n)`` random patterns of the batch are stored; batch 0
    fills slots ``0 .. h - 1``, later batches replace ``h`` random occupied slots. Quirk kept
    on purpose: when batch 0 is smaller than ``M`` the memory never grows past batch 0's
    size (and later batches replace at most ``fill`` slots).
``fill_then_replace`` (default)
    Free slots first: ``k_fill = min(n, M - fill)`` random new patterns take the free slots,
    and when fewer than ``h`` were stored that way, ``h - k_fill`` more replace random slots
    that were occupied before this batch. Equal to ``paper`` once the memory is full.
``class_balanced``
    The memory is shared equally among all classes seen (in memory or in the batch):
    class ``c`` gets quota ``M // K`` (the first ``M % K`` classes in sorted label order get
    one more). New patterns grow their class up to its quota, using free slots first, then
    slots evicted at random from over-quota classes (largest excess first). A class already
    at its quota refreshes ``min(quota // (i + 1), n_c)`` of its own patterns with new ones,
    the per-class analogue of the paper's ``h``, so re-taught classes do not keep stale
    latents forever. Classes with enough data end within one pattern of each other.
"""

from typing import Any, Dict, Protocol, Tuple, runtime_checkable

import numpy as np

from .errors import ConfigError, InputError

Selection = Tuple[np.ndarray, np.ndarray]


def _check_int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f'{what} must be an integer >= {low}, got {value!r}')
    return int(value)


def _check_labels(labels: Any, what: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise InputError(f'{what} must be a 1-D integer array, got shape {array.shape}')
    if array.size and array.dtype.kind not in 'iu':
        raise InputError(f'{what} must hold integers, got dtype {array.dtype}')
    return array.astype(np.int64)


def replacement_count(capacity: int, batch_index: int, n_batch: int) -> int:
    """Return the paper's ``h = min(M // (i + 1), n)`` for batch ``i`` (from 0) of size ``n``."""
    capacity = _check_int(capacity, 'capacity')
    batch_index = _check_int(batch_index, 'batch_index')
    n_batch = _check_int(n_batch, 'n_batch')
    return min(capacity // (batch_index + 1), n_batch)


def check_select_args(capacity: Any, fill: Any, batch_index: Any, new_labels: Any,
                      memory_labels: Any, rng: Any) -> Tuple[int, int, int, np.ndarray,
                                                             np.ndarray]:
    """Validate the arguments every policy takes; return them normalised."""
    capacity = _check_int(capacity, 'capacity')
    fill = _check_int(fill, 'fill')
    batch_index = _check_int(batch_index, 'batch_index')
    if fill > capacity:
        raise InputError(f'fill {fill} exceeds capacity {capacity}')
    new = _check_labels(new_labels, 'new_labels')
    memory = _check_labels(memory_labels, 'memory_labels')
    if memory.size != fill:
        raise InputError(f'memory_labels has {memory.size} entries but fill is {fill}')
    if not isinstance(rng, np.random.Generator):
        raise InputError(f'rng must be a numpy.random.Generator, got {type(rng).__name__}')
    return capacity, fill, batch_index, new, memory


def validate_selection(indices: Any, slots: Any, *, capacity: int, fill: int,
                       n_new: int) -> None:
    """Raise InputError unless ``(indices, slots)`` is a valid selection.

    Valid: equal lengths, distinct indices in ``[0, n_new)``, distinct slots in
    ``[0, capacity)``, and the slots at or above ``fill`` are exactly
    ``fill .. fill + m - 1``.
    """
    idx = np.asarray(indices)
    slot = np.asarray(slots)
    if idx.ndim != 1 or slot.ndim != 1 or idx.size != slot.size:
        raise InputError(f'indices {idx.shape} and slots {slot.shape} must be 1-D and '
                         'of equal length')
    if idx.size == 0:
        return
    if idx.dtype.kind not in 'iu' or slot.dtype.kind not in 'iu':
        raise InputError('indices and slots must be integer arrays')
    if idx.min() < 0 or idx.max() >= n_new or np.unique(idx).size != idx.size:
        raise InputError(f'indices must be distinct and in [0, {n_new})')
    if slot.min() < 0 or slot.max() >= capacity or np.unique(slot).size != slot.size:
        raise InputError(f'slots must be distinct and in [0, {capacity})')
    grow = np.sort(slot[slot >= fill])
    if not np.array_equal(grow, np.arange(fill, fill + grow.size)):
        raise InputError(f'free slots must be {fill}, {fill + 1}, ... without gaps')


def _empty() -> Selection:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def _pick(rng: np.random.Generator, pool: int, count: int) -> np.ndarray:
    """``count`` distinct random integers from ``range(pool)``, in random order."""
    if count <= 0:
        return np.zeros(0, np.int64)
    return rng.permutation(pool)[:count].astype(np.int64)


@runtime_checkable
class ReplayPolicy(Protocol):
    """Decides which new patterns to store and where."""

    name: str

    def select(self, *, capacity: int, fill: int, batch_index: int, new_labels: np.ndarray,
               memory_labels: np.ndarray, rng: np.random.Generator) -> Selection:
        """Return ``(indices into the new batch, slots to write them to)``."""
        ...


class PaperReplacement:
    """The paper's literal rule: batch 0 fills ``h`` slots, later batches replace ``h``."""

    name = 'paper'

    def select(self, *, capacity: int, fill: int, batch_index: int, new_labels: np.ndarray,
               memory_labels: np.ndarray, rng: np.random.Generator) -> Selection:
        """Return ``(indices, slots)`` following the literal rule."""
        capacity, fill, batch_index, new, _ = check_select_args(
            capacity, fill, batch_index, new_labels, memory_labels, rng)
        h = replacement_count(capacity, batch_index, new.size)
        if batch_index == 0:
            chosen = _pick(rng, new.size, h)
            return chosen, np.arange(h, dtype=np.int64)
        count = min(h, fill)
        if count == 0:
            return _empty()
        chosen = _pick(rng, new.size, count)
        return chosen, _pick(rng, fill, count)


class FillThenReplace:
    """Free slots first, then replace so that at least ``h`` patterns enter per batch."""

    name = 'fill_then_replace'

    def select(self, *, capacity: int, fill: int, batch_index: int, new_labels: np.ndarray,
               memory_labels: np.ndarray, rng: np.random.Generator) -> Selection:
        """Return ``(indices, slots)``: free slots, then random old slots."""
        capacity, fill, batch_index, new, _ = check_select_args(
            capacity, fill, batch_index, new_labels, memory_labels, rng)
        h = replacement_count(capacity, batch_index, new.size)
        k_fill = min(new.size, capacity - fill)
        k_replace = min(max(k_fill, h) - k_fill, fill)
        if k_fill + k_replace == 0:
            return _empty()
        chosen = _pick(rng, new.size, k_fill + k_replace)
        slots = np.concatenate([np.arange(fill, fill + k_fill, dtype=np.int64),
                                _pick(rng, fill, k_replace)])
        return chosen, slots


def class_quotas(capacity: int, classes: np.ndarray) -> Dict[int, int]:
    """Share ``capacity`` equally among sorted ``classes``; the first ones get the remainder."""
    ordered = sorted(int(c) for c in np.unique(classes))
    if not ordered:
        return {}
    base, extra = divmod(capacity, len(ordered))
    return {c: base + (1 if rank < extra else 0) for rank, c in enumerate(ordered)}


def _evictions(excess: np.ndarray, need: int) -> np.ndarray:
    """Take ``need`` units from ``excess``, always from the largest (ties: lowest index)."""
    if need <= 0:
        return np.zeros_like(excess)
    # lowest level L with sum(max(excess - L, 0)) <= need, then one more from the first
    # classes still at level L until the total is reached
    low, high = 0, int(excess.max())
    while low < high:
        mid = (low + high) // 2
        if np.maximum(excess - mid, 0).sum() <= need:
            high = mid
        else:
            low = mid + 1
    take = np.maximum(excess - low, 0)
    rest = need - int(take.sum())
    if rest > 0:
        at_level = np.flatnonzero(excess >= max(low, 1))[:rest]
        take[at_level] += 1
    return take


class ClassBalanced:
    """Equal share of the memory for every class seen; see the module docstring."""

    name = 'class_balanced'

    def select(self, *, capacity: int, fill: int, batch_index: int, new_labels: np.ndarray,
               memory_labels: np.ndarray, rng: np.random.Generator) -> Selection:
        """Return ``(indices, slots)`` keeping classes balanced."""
        capacity, fill, batch_index, new, memory = check_select_args(
            capacity, fill, batch_index, new_labels, memory_labels, rng)
        if new.size == 0 or capacity == 0:
            return _empty()
        quotas = class_quotas(capacity, np.concatenate([memory, new]))
        classes = sorted(quotas)
        new_by_class = {c: np.flatnonzero(new == c) for c in classes}
        mem_by_class = {c: np.flatnonzero(memory == c) for c in classes}
        grow: Dict[int, int] = {}
        refresh: Dict[int, int] = {}
        for c in classes:
            n_c, m_c, q_c = new_by_class[c].size, mem_by_class[c].size, quotas[c]
            grow[c] = min(n_c, max(q_c - m_c, 0))
            h_c = min(q_c // (batch_index + 1), n_c)
            refresh[c] = max(h_c - grow[c], 0)
        total_grow = sum(grow.values())
        free = capacity - fill
        excess = np.array([max(mem_by_class[c].size - quotas[c], 0) for c in classes])
        evict = _evictions(excess, total_grow - free)

        evicted_slots = []
        own_slots: Dict[int, np.ndarray] = {}
        for c, n_evict in zip(classes, evict.tolist()):
            slots_c = mem_by_class[c]
            order = _pick(rng, slots_c.size, n_evict + refresh[c])
            evicted_slots.append(slots_c[order[:n_evict]])
            own_slots[c] = slots_c[order[n_evict:]]
        target = np.concatenate(
            [np.arange(fill, fill + min(free, total_grow), dtype=np.int64)]
            + evicted_slots)

        indices, slots = [], []
        used = 0
        for c in classes:
            chosen = new_by_class[c][_pick(rng, new_by_class[c].size, grow[c] + refresh[c])]
            indices.append(chosen)
            slots.append(target[used:used + grow[c]])
            used += grow[c]
            slots.append(own_slots[c])
        return (np.concatenate(indices).astype(np.int64),
                np.concatenate(slots).astype(np.int64))


POLICIES = {policy.name: policy
            for policy in (FillThenReplace, PaperReplacement, ClassBalanced)}


def get_policy(name: str) -> ReplayPolicy:
    """Return a policy instance by name ('fill_then_replace', 'paper', 'class_balanced')."""
    if not isinstance(name, str) or name not in POLICIES:
        raise ConfigError(f'replay policy {name!r} is not one of {", ".join(POLICIES)}')
    return POLICIES[name]()
