"""Replay policies: the paper's h, its literal quirk, fill-then-replace growth, class balance."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real_images import NIC_COIL
from ros2_latent_replay.core.errors import ConfigError, InputError
from ros2_latent_replay.core.replay_policy import (
    POLICIES, ClassBalanced, FillThenReplace, PaperReplacement, ReplayPolicy, class_quotas,
    get_policy, replacement_count, validate_selection)


class Memory:
    """A plain-list model of the replay memory that applies selections and checks them."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.labels = []            # label per occupied slot
        self.origin = []            # (batch, index in batch) per occupied slot

    def step(self, policy, batch_index, new_labels, rng):
        """Ask ``policy`` for a selection, validate it and apply it."""
        new_labels = np.asarray(new_labels, dtype=np.int64)
        fill = len(self.labels)
        indices, slots = policy.select(
            capacity=self.capacity, fill=fill, batch_index=batch_index,
            new_labels=new_labels, memory_labels=np.asarray(self.labels, dtype=np.int32),
            rng=rng)
        validate_selection(indices, slots, capacity=self.capacity, fill=fill,
                           n_new=len(new_labels))
        for index, slot in sorted(zip(indices.tolist(), slots.tolist()), key=lambda p: p[1]):
            if slot < len(self.labels):
                self.labels[slot] = int(new_labels[index])
                self.origin[slot] = (batch_index, index)
            else:
                assert slot == len(self.labels)
                self.labels.append(int(new_labels[index]))
                self.origin.append((batch_index, index))
        assert len(self.labels) <= self.capacity
        return indices, slots


def _nic_like_batches(rng, n_classes=10, first=180, later=18, count=100):
    """Batch 0: ``first`` frames of several classes; then one class per ``later``-frame batch."""
    batches = [rng.integers(0, n_classes, size=first)]
    for _ in range(count):
        batches.append(np.full(later, rng.integers(0, 2 * n_classes)))
    return batches


@pytest.mark.parametrize('capacity, batch_index, n_batch, expected', [
    (1500, 0, 300, 300), (1500, 0, 3000, 1500), (1500, 4, 1000, 300), (1500, 4, 100, 100),
    (10, 3, 5, 2), (10, 10, 5, 0), (7, 2, 7, 2), (0, 0, 5, 0), (5, 0, 0, 0),
])
def test_replacement_count_is_m_over_i_plus_1(capacity, batch_index, n_batch, expected):
    assert replacement_count(capacity, batch_index, n_batch) == expected


@pytest.mark.parametrize('args', [(-1, 0, 1), (10, -1, 1), (10, 0, -2), (10.0, 0, 1),
                                  (True, 0, 1)])
def test_replacement_count_rejects_bad_arguments(args):
    with pytest.raises(InputError):
        replacement_count(*args)


def test_paper_rule_stores_h_per_batch_on_tiny_cases():
    memory = Memory(12)
    rng = np.random.default_rng(0)
    stored = []
    for i in range(8):
        indices, _ = memory.step(PaperReplacement(), i, np.arange(20) % 3, rng)
        stored.append(len(indices))
    assert stored == [min(12 // (i + 1), 20) for i in range(8)]
    assert len(memory.labels) == 12


def test_paper_rule_quirk_memory_never_grows_past_batch_0():
    memory = Memory(10)
    rng = np.random.default_rng(1)
    memory.step(PaperReplacement(), 0, [0, 0, 1, 1], rng)
    assert len(memory.labels) == 4
    for i in range(1, 12):
        indices, slots = memory.step(PaperReplacement(), i, np.full(6, i), rng)
        assert len(memory.labels) == 4, 'the literal rule only replaces after batch 0'
        assert np.all(slots < 4)
        assert len(indices) == min(10 // (i + 1), 6, 4)


def test_paper_rule_later_batch_on_empty_memory_stores_nothing():
    indices, slots = PaperReplacement().select(
        capacity=5, fill=0, batch_index=3, new_labels=np.arange(4),
        memory_labels=np.zeros(0, np.int64), rng=np.random.default_rng(0))
    assert indices.size == slots.size == 0


def test_fill_then_replace_growth_on_a_nic_coil_like_stream():
    capacity = 1500
    memory = Memory(capacity)
    rng = np.random.default_rng(2)
    batches = _nic_like_batches(np.random.default_rng(3), count=100)
    fills = []
    for i, labels in enumerate(batches):
        indices, slots = memory.step(FillThenReplace(), i, labels, rng)
        h = replacement_count(capacity, i, len(labels))
        assert len(indices) == max(min(len(labels), capacity - (fills[-1] if fills else 0)), h)
        fills.append(len(memory.labels))
    # 180 + 18 j patterns after batch j until full: 1494 after batch 73, 1500 after batch 74
    assert fills[0] == 180
    assert fills[73] == 1494
    assert fills[74] == 1500 and fills[-1] == 1500
    assert all(fills[j] == 180 + 18 * j for j in range(74))
    # the paper rule on the same stream is stuck at batch 0's size
    paper = Memory(capacity)
    for i, labels in enumerate(batches):
        paper.step(PaperReplacement(), i, labels, rng)
    assert len(paper.labels) == 180


def test_fill_then_replace_replaces_only_slots_occupied_before_the_batch():
    rng = np.random.default_rng(4)
    for fill in (0, 3, 7, 9, 10):
        indices, slots = FillThenReplace().select(
            capacity=10, fill=fill, batch_index=1, new_labels=np.arange(8),
            memory_labels=np.zeros(fill, np.int64), rng=rng)
        k_fill = min(8, 10 - fill)
        assert len(indices) == max(k_fill, min(10 // 2, 8))
        np.testing.assert_array_equal(slots[:k_fill], np.arange(fill, fill + k_fill))
        assert np.all(slots[k_fill:] < fill)


def test_fill_then_replace_equals_paper_counts_once_full():
    memory = Memory(20)
    rng = np.random.default_rng(5)
    memory.step(FillThenReplace(), 0, np.arange(30) % 4, rng)
    assert len(memory.labels) == 20
    for i in range(1, 30):
        indices, slots = memory.step(FillThenReplace(), i, np.full(9, i % 4), rng)
        assert len(indices) == min(20 // (i + 1), 9)


@pytest.mark.parametrize('name', sorted(POLICIES))
def test_policies_are_deterministic_for_a_given_rng(name):
    policy = get_policy(name)
    assert isinstance(policy, ReplayPolicy) and policy.name == name
    args = dict(capacity=50, fill=40, batch_index=2, new_labels=np.arange(30) % 5,
                memory_labels=np.arange(40) % 7)
    first = policy.select(rng=np.random.default_rng(7), **args)
    again = policy.select(rng=np.random.default_rng(7), **args)
    other = policy.select(rng=np.random.default_rng(8), **args)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_class_quotas_spread_the_remainder_deterministically():
    assert class_quotas(10, np.array([7, 3, 3, 5])) == {3: 4, 5: 3, 7: 3}
    assert class_quotas(9, np.array([1, 2, 3])) == {1: 3, 2: 3, 3: 3}
    assert class_quotas(2, np.array([4, 1, 9])) == {1: 1, 4: 1, 9: 0}
    assert class_quotas(5, np.zeros(0, np.int64)) == {}


def test_class_balanced_evens_out_and_never_exceeds_capacity():
    capacity = 100
    memory = Memory(capacity)
    rng = np.random.default_rng(9)
    policy = ClassBalanced()
    memory.step(policy, 0, np.zeros(150, np.int64), rng)
    assert Counter(memory.labels) == {0: 100}
    seen = {0}
    for i, label in enumerate([1, 2, 3, 1, 4, 5, 6, 2, 0, 6], start=1):
        fill_before = len(memory.labels)
        free_before = capacity - fill_before
        indices, slots = memory.step(policy, i, np.full(60, label), rng)
        seen.add(label)
        counts = Counter(memory.labels)
        assert len(memory.labels) == capacity
        assert set(counts) == seen
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        quotas = class_quotas(capacity, np.array(sorted(seen)))
        assert dict(counts) == quotas
        if free_before:
            assert np.count_nonzero(slots >= fill_before) == min(free_before, len(indices))


def test_class_balanced_uses_free_slots_first_and_keeps_small_classes():
    rng = np.random.default_rng(10)
    memory = Memory(60)
    memory.step(ClassBalanced(), 0, np.zeros(20, np.int64), rng)
    assert len(memory.labels) == 20
    # class 1 fits into free slots: class 0 (below its quota of 30) loses nothing
    indices, slots = memory.step(ClassBalanced(), 1, np.ones(5, np.int64), rng)
    assert np.all(slots >= 20) and Counter(memory.labels) == {0: 20, 1: 5}
    # class 2 brings 50: it grows to its quota of 20 using the 35 free slots
    memory.step(ClassBalanced(), 2, np.full(50, 2), rng)
    assert Counter(memory.labels) == {0: 20, 1: 5, 2: 20}
    # class 3: quota 15 each; over-quota classes (0 and 2) give way, the largest first
    memory.step(ClassBalanced(), 3, np.full(50, 3), rng)
    counts = Counter(memory.labels)
    assert len(memory.labels) == 60 and counts[1] == 5 and counts[3] == 15
    assert abs(counts[0] - counts[2]) <= 1 and counts[0] + counts[2] == 40


def test_class_balanced_refreshes_a_class_at_its_quota():
    rng = np.random.default_rng(11)
    memory = Memory(40)
    memory.step(ClassBalanced(), 0, np.arange(80) % 2, rng)
    assert Counter(memory.labels) == {0: 20, 1: 20}
    indices, slots = memory.step(ClassBalanced(), 1, np.zeros(30, np.int64), rng)
    # quota 20, refresh min(20 // 2, 30) = 10 of class 0's own slots, class 1 untouched
    assert len(indices) == 10
    assert Counter(memory.labels) == {0: 20, 1: 20}
    assert sum(1 for origin in memory.origin if origin[0] == 1) == 10


def test_class_balanced_on_the_real_nic_coil_sequence():
    run = NIC_COIL / 'run0'
    if not run.is_dir():
        pytest.skip(f'NIC_coil filelists not found at {run} (../shared/data absent)')
    files = sorted(run.glob('train_batch_*_filelist.txt'),
                   key=lambda p: int(p.stem.split('_')[2]))
    batches = [np.array([int(line.split()[1]) for line in p.read_text().splitlines()
                         if line.strip()]) for p in files]
    assert len(batches[0]) == 180 and all(0 < len(b) <= 18 for b in batches[1:])
    capacity = 300
    for name in POLICIES:
        memory = Memory(capacity)
        rng = np.random.default_rng(12)
        seen = set()
        for i, labels in enumerate(batches):
            memory.step(get_policy(name), i, labels, rng)
            seen.update(labels.tolist())
        counts = Counter(memory.labels)
        if name == 'class_balanced':
            assert set(counts) == seen
            assert max(counts.values()) - min(counts.values()) <= 1, counts
        elif name == 'paper':
            assert len(memory.labels) == 180
        else:
            assert len(memory.labels) == capacity


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(POLICIES)), st.integers(0, 30), st.integers(0, 2 ** 32 - 1),
       st.lists(st.tuples(st.integers(0, 25), st.integers(0, 5)), min_size=1, max_size=12))
def test_every_selection_is_valid_on_random_streams(name, capacity, seed, batches):
    policy = get_policy(name)
    memory = Memory(capacity)
    rng = np.random.default_rng(seed)
    for i, (size, n_labels) in enumerate(batches):
        labels = rng.integers(0, n_labels + 1, size=size)
        memory.step(policy, i, labels, rng)     # validates and checks <= capacity


def test_validate_selection_rejects_bad_selections():
    ok = dict(capacity=10, fill=4, n_new=5)
    validate_selection(np.array([0, 1]), np.array([4, 2]), **ok)
    bad = [([0, 0], [4, 5]), ([0, 5], [4, 5]), ([0, 1], [4, 4]), ([0, 1], [5, 6]),
           ([0, 1], [4, 10]), ([0], [4, 5]), ([0, 1], [-1, 4])]
    for indices, slots in bad:
        with pytest.raises(InputError):
            validate_selection(np.array(indices), np.array(slots), **ok)


@pytest.mark.parametrize('change, match', [
    (dict(fill=11), 'exceeds capacity'), (dict(memory_labels=np.zeros(3)), 'integers'),
    (dict(memory_labels=np.zeros(2, np.int64)), 'fill is 3'),
    (dict(new_labels=np.zeros((2, 2), np.int64)), '1-D'), (dict(rng=7), 'Generator'),
    (dict(batch_index=-1), 'batch_index'),
])
def test_select_validates_its_arguments(change, match):
    args = dict(capacity=10, fill=3, batch_index=1, new_labels=np.arange(4),
                memory_labels=np.zeros(3, np.int64), rng=np.random.default_rng(0))
    args.update(change)
    for name in POLICIES:
        with pytest.raises(InputError, match=match):
            get_policy(name).select(**args)


def test_get_policy_names():
    assert sorted(POLICIES) == ['class_balanced', 'fill_then_replace', 'paper']
    assert isinstance(get_policy('fill_then_replace'), FillThenReplace)
    assert isinstance(get_policy('paper'), PaperReplacement)
    assert isinstance(get_policy('class_balanced'), ClassBalanced)
    for name in ('', 'reservoir', None, 3):
        with pytest.raises(ConfigError):
            get_policy(name)
