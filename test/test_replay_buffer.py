"""SharedReplayBuffer: storage, validation, checkpoints, cross-process use and cleanup."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_latent_replay.core import latent_codec, replay_buffer
from ros2_latent_replay.core.errors import BusyError, CheckpointError, ConfigError, InputError
from ros2_latent_replay.core.replay_buffer import SharedReplayBuffer, cleanup_stale_segments

REPO_ROOT = Path(__file__).resolve().parents[1]
SHM = Path('/dev/shm')
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason='needs POSIX shared memory in /dev/shm')


def _segments():
    return {p.name for p in SHM.iterdir() if p.name.startswith('ros2lr_')}


def _header_pid(name):
    try:
        raw = (SHM / name).read_bytes()[:128]
    except OSError:
        return None
    header = np.frombuffer(raw, np.int64) if len(raw) == 128 else None
    if header is not None and int(header[0]) == replay_buffer.MAGIC:
        return int(header[8])
    head = name[len('ros2lr_'):].split('_')[0]
    return int(head) if head.isdigit() else None


def _dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture(autouse=True)
def no_segment_left_behind():
    """Fail a test that leaves a segment of this process or of a dead process in /dev/shm.

    Segments of other live processes (other test runs on a shared machine) are ignored.
    """
    before = _segments()
    yield
    left = []
    for name in sorted(_segments() - before):
        pid = _header_pid(name)
        if pid is None or pid == os.getpid() or _dead(pid):
            left.append(name)
            (SHM / name).unlink(missing_ok=True)
    assert not left, f'shared-memory segments left behind: {left}'


def _latents(k, shape=(6, 3, 3), seed=0):
    return torch.from_numpy(
        np.random.default_rng(seed).normal(size=(k,) + shape).astype(np.float32) * 3)


def _expected(latents, storage):
    """Return what the buffer must give back: decode(encode(x)) of the codec."""
    return torch.from_numpy(latent_codec.decode(latent_codec.encode(latents, storage), storage))


def _child_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _run_child(code, *args, timeout=120):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *map(str, args)],
                          env=_child_env(), capture_output=True, text=True, timeout=timeout)


def _readline(proc, timeout=120.0):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ''
    if not line:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f'child printed nothing (rc {proc.returncode}); stderr:\n{err}')
    return line.strip()


@pytest.mark.parametrize('storage', latent_codec.STORAGES)
def test_write_read_round_trip(storage):
    with SharedReplayBuffer(8, (6, 3, 3), storage=storage) as buf:
        assert buf.owner and buf.fill == 0 and len(buf) == 0
        assert buf.name.startswith(f'ros2lr_{os.getpid()}_')
        assert buf.bytes_per_pattern == latent_codec.bytes_per_pattern(storage, (6, 3, 3))
        assert (SHM / buf.name).stat().st_size == buf.nbytes
        assert buf.nbytes >= 128 + 4 * 8 + 8 * buf.bytes_per_pattern
        x = _latents(5)
        buf.write(np.arange(3), x[:3], np.array([4, 0, 2]))
        buf.write(np.array([4, 3]), x[3:], np.array([1, 1], np.int64))
        assert buf.fill == 5
        latents, labels = buf.read_all()
        assert latents.dtype == torch.float32 and labels.dtype == np.int32
        order = [0, 1, 2, 4, 3]                          # slot 3 got x[4], slot 4 got x[3]
        assert torch.equal(latents, _expected(x[order], storage))
        np.testing.assert_array_equal(labels, [4, 0, 2, 1, 1])
        assert torch.equal(buf.read(np.array([3, 0, 3])), _expected(x[[4, 0, 4]], storage))
        np.testing.assert_array_equal(buf.labels(), labels)


def test_overwrite_clear_and_copies():
    with SharedReplayBuffer(4, (2, 2, 2), storage='float32') as buf:
        x = _latents(4, (2, 2, 2))
        buf.write(np.arange(4), x, np.arange(4))
        generation = buf.generation
        assert generation % 2 == 0 and generation > 0
        buf.write(np.array([2]), x[:1] + 10, np.array([9]))
        assert buf.fill == 4 and buf.generation == generation + 2
        latents, labels = buf.read_all()
        assert torch.equal(latents[2], x[0] + 10) and labels.tolist() == [0, 1, 9, 3]
        labels[:] = 7                                   # copies, not views
        latents.zero_()
        assert buf.labels().tolist() == [0, 1, 9, 3]
        buf.write(np.zeros(0, np.int64), x[:0], np.zeros(0, np.int32))   # empty: no-op
        assert buf.generation == generation + 2
        buf.clear()
        assert buf.fill == 0 and buf.labels().size == 0 and buf.read_all()[0].shape == (0, 2, 2, 2)
        with pytest.raises(InputError, match='not occupied'):
            buf.read(np.array([0]))
        buf.write(np.array([0]), x[:1], np.array([5]))
        assert buf.fill == 1 and buf.labels().tolist() == [5]


@pytest.mark.parametrize('slots, latents, labels, match', [
    ([0, 1], _latents(2), [0], 'as many'),
    ([0, 2], _latents(2), [0, 1], 'contiguously'),           # fill is 1: free slot 1 first
    ([1, 1], _latents(2), [0, 1], 'repeat'),
    ([1, 2, 3, 4, 5, 6, 7, 8], _latents(8), np.arange(8), r'\[0, 8\)'),
    ([-1], _latents(1), [0], r'\[0, 8\)'),
    ([1], _latents(1, (6, 3, 4)), [0], 'per-pattern shape'),
    ([1], _latents(1)[0], [0], 'shape'),
    ([1], _latents(1).fill_(float('nan')), [0], 'NaN'),
    ([1], _latents(1).to(torch.int32), [0], 'floating'),
    ([1], _latents(1), [-3], 'labels must be in'),
    ([1], _latents(1), [2 ** 31], 'labels must be in'),
    ([1], _latents(1), [0.5], 'integers'),
    ([1.0], _latents(1), [0], 'integers'),
    ([[1]], _latents(1), [0], '1-D'),
])
def test_invalid_writes_change_nothing(slots, latents, labels, match):
    with SharedReplayBuffer(8, (6, 3, 3), storage='uint8') as buf:
        buf.write(np.array([0]), _latents(1, seed=3), np.array([3]))
        before = buf.state_dict()
        generation = buf.generation
        with pytest.raises(InputError, match=match):
            buf.write(np.array(slots), latents, np.array(labels))
        assert buf.generation == generation and buf.fill == 1
        after = buf.state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before)


def test_constructor_validation():
    for args in [(-1, (2, 2, 2)), (2.0, (2, 2, 2)), (True, (2, 2, 2)), (4, (2, 2)),
                 (4, (0, 2, 2)), (4, 'abc')]:
        with pytest.raises(InputError):
            SharedReplayBuffer(*args)
    with pytest.raises(ConfigError, match='int8'):
        SharedReplayBuffer(4, (2, 2, 2), storage='int8')
    for name in ['', 'a/b', 'x' * 201, 7]:
        with pytest.raises(InputError, match='name'):
            SharedReplayBuffer(4, (2, 2, 2), name=name)


def test_capacity_zero_is_a_valid_empty_memory():
    with SharedReplayBuffer(0, (2, 2, 2)) as buf:
        assert buf.fill == 0 and buf.read_all()[0].shape == (0, 2, 2, 2)
        with pytest.raises(InputError):
            buf.write(np.array([0]), _latents(1, (2, 2, 2)), np.array([0]))


def test_too_large_for_dev_shm_fails_cleanly():
    with pytest.raises(ConfigError, match='shared memory'):
        SharedReplayBuffer(100_000_000, (512, 8, 8), storage='float32')


def test_named_buffer_and_duplicate_name():
    name = f'ros2lr_{os.getpid()}_named_test'
    with SharedReplayBuffer(2, (1, 2, 2), name=name) as buf:
        assert buf.name == name and (SHM / name).exists()
        with pytest.raises(InputError, match='already exists'):
            SharedReplayBuffer(2, (1, 2, 2), name=name)
        assert (SHM / name).exists()
    assert not (SHM / name).exists()


def test_attach_in_the_same_process_is_read_only_and_never_unlinks():
    owner = SharedReplayBuffer(6, (3, 2, 2), storage='float16')
    try:
        owner.write(np.arange(2), _latents(2, (3, 2, 2)), np.array([1, 2]))
        reader = SharedReplayBuffer.attach(owner.name)
        assert not reader.owner
        layout = (reader.capacity, reader.latent_shape, reader.storage)
        assert layout == (6, (3, 2, 2), 'float16')
        assert reader.nbytes == owner.nbytes and reader.owner_pid == os.getpid()
        assert reader.fill == 2 and torch.equal(reader.read_all()[0], owner.read_all()[0])
        owner.write(np.array([2]), _latents(1, (3, 2, 2)), np.array([5]))
        assert reader.fill == 3 and reader.labels().tolist() == [1, 2, 5]   # live view
        for action in (lambda: reader.write(np.array([0]), _latents(1, (3, 2, 2)),
                                            np.array([0])),
                       reader.clear, lambda: reader.load_state_dict(owner.state_dict())):
            with pytest.raises(InputError, match='read-only'):
                action()
        reader.close()
        reader.close()
        with pytest.raises(InputError, match='closed'):
            reader.read_all()
        assert (SHM / owner.name).exists() and owner.fill == 3
        with SharedReplayBuffer.attach(owner.name) as again:
            assert again.fill == 3
        assert (SHM / owner.name).exists()
    finally:
        owner.close()
    assert not (SHM / owner.name).exists()
    owner.close()                                   # idempotent
    with pytest.raises(InputError, match='closed'):
        owner.fill


def test_owner_unlink_keeps_the_mapping_usable():
    buf = SharedReplayBuffer(3, (1, 1, 2))
    buf.unlink()
    assert not (SHM / buf.name).exists()
    buf.write(np.array([0]), _latents(1, (1, 1, 2)), np.array([0]))
    assert buf.fill == 1
    buf.unlink()
    buf.close()


def test_garbage_collected_owner_unlinks():
    buf = SharedReplayBuffer(3, (1, 1, 2))
    name = buf.name
    reader = SharedReplayBuffer.attach(name)
    del buf
    assert not (SHM / name).exists()
    assert reader.fill == 0                          # the reader's mapping stays valid
    reader.close()


def test_attach_refuses_what_is_not_a_buffer():
    with pytest.raises(InputError, match='no shared-memory segment'):
        SharedReplayBuffer.attach(f'ros2lr_{os.getpid()}_missing')
    with pytest.raises(InputError, match='name'):
        SharedReplayBuffer.attach('../etc/passwd')
    foreign = SharedMemory(name=f'ros2lr_{os.getpid()}_foreign', create=True, size=4096)
    try:
        foreign.buf[:8] = b'NOTOURS!'
        with pytest.raises(InputError, match='not a ros2_latent_replay buffer'):
            SharedReplayBuffer.attach(foreign.name)
    finally:
        foreign.close()
        foreign.unlink()


def test_read_gives_up_on_a_write_that_never_finishes(monkeypatch):
    monkeypatch.setattr(replay_buffer, 'READ_RETRY_SECONDS', 0.2)
    with SharedReplayBuffer(2, (1, 1, 1)) as buf:
        buf.write(np.array([0]), _latents(1, (1, 1, 1)), np.array([0]))
        reader = SharedReplayBuffer.attach(buf.name)
        buf._begin_write()                           # a writer that died mid-write
        try:
            with pytest.raises(BusyError, match='being written'):
                reader.read_all()
        finally:
            buf._end_write()
        assert reader.read_all()[1].tolist() == [0]
        reader.close()


def test_a_write_landing_during_a_read_makes_the_reader_retry(monkeypatch):
    with SharedReplayBuffer(4, (2, 2, 2), storage='float32') as buf:
        buf.write(np.arange(4), torch.zeros(4, 2, 2, 2), np.zeros(4, np.int32))
        reader = SharedReplayBuffer.attach(buf.name)
        copy_rows = reader._raw_rows
        calls = []

        def racing_copy(rows):
            rows_copy = copy_rows(rows)
            if not calls:     # the owner writes after the data copy, before the labels copy
                buf.write(np.arange(4), torch.ones(4, 2, 2, 2), np.ones(4, np.int32))
            calls.append(rows)
            return rows_copy

        monkeypatch.setattr(reader, '_raw_rows', racing_copy)
        latents, labels = reader.read_all()
        assert len(calls) == 2, 'the torn first copy was not retried'
        assert labels.tolist() == [1, 1, 1, 1] and bool((latents == 1).all())
        reader.close()


@pytest.mark.parametrize('storage', latent_codec.STORAGES)
@pytest.mark.parametrize('count', [0, 3, 7])
def test_state_dict_round_trip_through_torch_save(storage, count, tmp_path):
    with SharedReplayBuffer(7, (4, 2, 3), storage=storage) as source, \
            SharedReplayBuffer(7, (4, 2, 3), storage=storage) as target:
        x = _latents(count, (4, 2, 3), seed=count)
        source.write(np.arange(count), x, np.arange(count) % 3)
        target.write(np.arange(2), _latents(2, (4, 2, 3), seed=9), np.array([8, 8]))
        path = tmp_path / 'replay.pt'
        torch.save(source.state_dict(), path)
        state = torch.load(path, weights_only=True)
        assert all(isinstance(value, torch.Tensor) for value in state.values())
        target.load_state_dict(state)
        assert target.fill == count
        loaded = target.state_dict()
        original = source.state_dict()
        assert set(loaded) == set(original)
        assert all(torch.equal(loaded[key], original[key]) for key in original)
        latents, labels = target.read_all()
        assert torch.equal(latents, _expected(x, storage))
        np.testing.assert_array_equal(labels, np.arange(count) % 3)


def _tamper(state, **changes):
    state = dict(state)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def test_load_state_dict_refuses_mismatches_and_changes_nothing():
    with SharedReplayBuffer(5, (2, 2, 2), storage='uint8') as buf:
        buf.write(np.arange(3), _latents(3, (2, 2, 2)), np.array([0, 1, 2]))
        good = buf.state_dict()
        others = []
        for capacity, shape, storage in [(5, (2, 2, 2), 'float16'), (5, (2, 2, 1), 'uint8'),
                                         (6, (2, 2, 2), 'uint8')]:
            with SharedReplayBuffer(capacity, shape, storage=storage) as other:
                other.write(np.arange(2), _latents(2, shape), np.array([0, 1]))
                others.append(other.state_dict())
        bad_states = others + [
            _tamper(good, scale=None),
            _tamper(good, extra=torch.zeros(1)),
            _tamper(good, fill=torch.tensor(6)),
            _tamper(good, fill=torch.tensor(2)),
            _tamper(good, fill=torch.tensor(3.0)),
            _tamper(good, labels=good['labels'].long()),
            _tamper(good, labels=-good['labels']),
            _tamper(good, data=good['data'].float()),
            _tamper(good, scale=good['scale'].clone().fill_(float('nan'))),
            _tamper(good, scale=-good['scale'] - 1),
            _tamper(good, layout=good['layout'][:5]),
            _tamper(good, offset=good['offset'].numpy()),
            [1, 2, 3],
        ]
        generation = buf.generation
        for state in bad_states:
            with pytest.raises(CheckpointError):
                buf.load_state_dict(state)
        assert buf.generation == generation
        after = buf.state_dict()
        assert all(torch.equal(after[key], good[key]) for key in good)
    with pytest.raises(CheckpointError, match='capacity 6 != 5'):
        with SharedReplayBuffer(5, (2, 2, 2), storage='uint8') as buf:
            buf.load_state_dict(others[2])


def test_one_writer_and_readers_in_threads():
    with SharedReplayBuffer(32, (8, 4, 4), storage='float32') as buf:
        stop = threading.Event()
        problems = []

        def reader():
            while not stop.is_set():
                latents, labels = buf.read_all()
                if labels.size and not (np.all(labels == labels[0])
                                        and bool((latents == float(labels[0])).all())):
                    problems.append(labels.tolist())

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for version in range(300):
                buf.write(np.arange(32), torch.full((32, 8, 4, 4), float(version)),
                          np.full(32, version))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not problems, problems[:3]


ATTACH_CHILD = """
    import sys
    import numpy as np
    import torch
    from ros2_latent_replay.core.errors import InputError
    from ros2_latent_replay.core.replay_buffer import SharedReplayBuffer
    name, expected_path = sys.argv[1:3]
    expected = torch.load(expected_path, weights_only=True)
    buf = SharedReplayBuffer.attach(name)
    assert (buf.capacity, buf.latent_shape, buf.storage) == (
        expected['capacity'], tuple(expected['shape']), expected['storage'])
    latents, labels = buf.read_all()
    assert torch.equal(latents, expected['latents']), 'latents differ'
    assert np.array_equal(labels, expected['labels'].numpy()), 'labels differ'
    assert torch.equal(buf.read(np.array([2, 0])), expected['latents'][[2, 0]])
    try:
        buf.write(np.array([0]), latents[:1], labels[:1])
    except InputError:
        pass
    else:
        raise SystemExit('an attached handle could write')
    print('OK', buf.fill, flush=True)
    # no close(): exiting must not unlink the owner's segment either
"""


@pytest.mark.parametrize('storage', ['uint8', 'float16'])
def test_attach_from_another_process(storage, tmp_path):
    owner = SharedReplayBuffer(10, (6, 3, 3), storage=storage)
    try:
        x = _latents(7)
        owner.write(np.arange(7), x, np.array([3, 1, 4, 1, 5, 9, 2]))
        latents, labels = owner.read_all()
        torch.save({'capacity': 10, 'shape': [6, 3, 3], 'storage': storage,
                    'latents': latents, 'labels': torch.from_numpy(labels)},
                   tmp_path / 'expected.pt')
        result = _run_child(ATTACH_CHILD, owner.name, tmp_path / 'expected.pt')
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ['OK', '7']
        assert 'leaked' not in result.stderr and 'resource_tracker' not in result.stderr, \
            result.stderr
        assert (SHM / owner.name).exists(), 'the child unlinked the owner segment'
        assert owner.fill == 7 and torch.equal(owner.read_all()[0], latents)
    finally:
        owner.close()
    assert not (SHM / owner.name).exists()


SEQLOCK_CHILD = """
    import sys, time
    import numpy as np
    from ros2_latent_replay.core.replay_buffer import SharedReplayBuffer
    buf = SharedReplayBuffer.attach(sys.argv[1])
    print('ready', flush=True)
    versions, bad, reads = set(), 0, 0
    deadline = time.monotonic() + 30
    while (reads < 300 or len(versions) < 20) and time.monotonic() < deadline:
        latents, labels = buf.read_all()
        reads += 1
        if labels.size == 0:
            continue
        version = int(labels[0])
        if labels.size != buf.capacity or not (labels == version).all() \\
                or not (latents.numpy() == version).all():
            bad += 1
        versions.add(version)
    print(reads, len(versions), bad, flush=True)
"""


def test_cross_process_reader_never_sees_a_torn_write():
    with SharedReplayBuffer(256, (16, 8, 8), storage='float32') as buf:
        proc = subprocess.Popen([sys.executable, '-c', textwrap.dedent(SEQLOCK_CHILD),
                                 buf.name], env=_child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert _readline(proc) == 'ready'
            version = 0
            slots = np.arange(256)
            while proc.poll() is None:
                buf.write(slots, torch.full((256, 16, 8, 8), float(version)),
                          np.full(256, version))
                version += 1
                # a real owner writes once per learning step; a writer that never pauses
                # can starve the reader's retries on a loaded CPU (it then raises BusyError)
                time.sleep(0.0005)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        reads, versions, bad = map(int, out.split())
        assert versions >= 3, f'the reader saw only {versions} versions in {reads} reads'
        assert bad == 0, f'{bad} of {reads} snapshots mixed two writes'


KILLED_OWNER_CHILD = """
    import time
    import numpy as np
    from ros2_latent_replay.core.replay_buffer import SharedReplayBuffer
    buf = SharedReplayBuffer(4, (2, 2, 2), storage='uint8')
    buf.write(np.arange(2), np.ones((2, 2, 2, 2), np.float32), np.array([0, 1]))
    print(buf.name, flush=True)
    time.sleep(300)
"""


def _group_members(pgid):
    members = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / 'stat').read_text()
            except OSError:
                continue
            fields = stat.rsplit(')', 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in ('Z', 'X'):
                members.append(int(entry.name))
    return members


def test_segment_of_a_killed_owner_is_removed_by_the_next_buffer():
    proc = subprocess.Popen([sys.executable, '-c', textwrap.dedent(KILLED_OWNER_CHILD)],
                            env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        name = _readline(proc)
        assert name.startswith(f'ros2lr_{proc.pid}_') and (SHM / name).exists()
        # the owner and its resource tracker share the new process group: kill both at once
        assert len(_group_members(proc.pid)) >= 2, 'expected a resource tracker process'
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (SHM / name).exists(), 'nothing should have cleaned up after a hard crash'
        with SharedReplayBuffer(1, (1, 1, 1)):
            assert not (SHM / name).exists(), 'the constructor did not remove the stale segment'
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_cleanup_stale_segments_decides_by_owner_pid():
    dead = _dead_pid()
    with SharedReplayBuffer(2, (1, 1, 2)) as live:
        image = bytearray((SHM / live.name).read_bytes())
        header = np.frombuffer(image, np.int64, count=16)
        header[8] = dead
        stale = SHM / f'ros2lr_{os.getpid()}_copy_of_dead_owner'  # the header pid wins
        stale.write_bytes(bytes(image))
        unrelated = SHM / f'ros2lrx_{dead}_other_prefix'
        unrelated.write_bytes(bytes(image))
        header[9] += 1                                          # another pid namespace
        foreign_ns = SHM / f'ros2lr_{dead}_other_namespace'
        foreign_ns.write_bytes(bytes(image))
        old_headerless = SHM / f'ros2lr_{dead}_crashed_at_creation'
        old_headerless.write_bytes(bytes(64))
        os.utime(old_headerless, (time.time() - 600, time.time() - 600))
        young_headerless = SHM / f'ros2lr_{dead}_being_created'
        young_headerless.write_bytes(bytes(64))
        try:
            removed = cleanup_stale_segments()
            assert sorted(removed) == sorted([stale.name, old_headerless.name])
            assert (SHM / live.name).exists() and foreign_ns.exists()
            assert young_headerless.exists() and unrelated.exists()
            assert cleanup_stale_segments() == []
            assert cleanup_stale_segments('ros2lrx_') == [unrelated.name]
        finally:
            for path in (stale, foreign_ns, old_headerless, young_headerless, unrelated):
                path.unlink(missing_ok=True)
    with pytest.raises(InputError):
        cleanup_stale_segments('a/b')
