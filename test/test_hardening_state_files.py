"""Corrupt and hostile state files: refused with a clear error, nothing executed.

Truncated and bit-flipped files fail the checksum; files of another backbone, cut or class
limit fail the architecture check; pickles that would run code when unpickled are refused
by the header check or by ``torch.load(weights_only=True)`` and never run; files tampered
with and re-checksummed (NaN weights, replay labels beyond the known classes, class names
the label rules refuse, a class limit that differs from the head) fail the consistency
checks. The learner keeps its state when a load is refused. The node refuses to start on
such a file unless ``start_fresh_on_bad_state`` is set, in which case it moves the file
aside untouched and starts from the pretrained network.
"""

import builtins
import copy
import io
import os
import pickle

import pytest
import rclpy
import torch
from rclpy.context import Context
from rclpy.parameter import Parameter

from hardening_support import HARDENED, learner_values
from node_harness import views
from ros2_latent_replay import node as node_module
from ros2_latent_replay.core import checkpoint
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.errors import CheckpointError
from ros2_latent_replay.core.learner import ContinualLearner
from ros2_latent_replay.node import LatentReplayNode

CONFIG = LearnerConfig.from_dict(learner_values(HARDENED))


class _RunsCode:
    """Unpickling this would call ``exec`` and create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f'open({self.marker!r}, "w").write("pwned")',)


def _with_header(payload):
    """Wrap ``payload`` in a checkpoint header with a correct checksum."""
    import hashlib
    digest = hashlib.sha256(payload).hexdigest().encode()
    return b'%s %d %s\n' % (checkpoint.MAGIC, checkpoint.FORMAT_VERSION, digest) + payload


def _torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def good_state(tmp_path_factory):
    """Return a real state of two taught classes (dict and file bytes)."""
    objects = views(2, 4, 0)
    with ContinualLearner(CONFIG) as learner:
        for name, (train, _) in objects.items():
            learner.observe(train, name)
            learner.learn()
        state = learner.state_dict()
        path = tmp_path_factory.mktemp('good') / 'state.pt'
        learner.save(str(path))
    return state, path.read_bytes()


def _state_of(config, tmp_path_factory):
    with ContinualLearner(config) as learner:
        learner.observe(views(1, 2, 0)['cat'][0], 'cat')
        learner.learn()
        return checkpoint.dumps(learner.state_dict())


@pytest.fixture(scope='module')
def hostile_files(good_state, tmp_path_factory):
    """Return {name: (bytes, words the refusal must contain)} and the marker path."""
    state, blob = good_state
    marker = tmp_path_factory.mktemp('marker') / 'code_ran'
    payload_start = blob.index(b'\n') + 1

    def flipped(offset, mask=0x10):
        data = bytearray(blob)
        data[offset] ^= mask
        return bytes(data)

    def tampered(change):
        other = copy.deepcopy(state)
        change(other)
        return checkpoint.dumps(other)

    def nan_weights(other):
        name = next(k for k, v in other['upper'].items() if v.is_floating_point()
                    and k.startswith('body'))
        other['upper'][name] = torch.full_like(other['upper'][name], float('nan'))

    def labels_beyond(other):
        other['replay']['labels'] = torch.full_like(other['replay']['labels'], 5)

    files = {
        'empty': (b'', 'missing header'),
        'truncated header': (blob[:20], 'missing header'),
        'truncated half': (blob[:len(blob) // 2], 'truncated or corrupted'),
        'truncated last byte': (blob[:-1], 'truncated or corrupted'),
        'bit flip in payload': (flipped(payload_start + len(blob) // 3), 'corrupted'),
        'bit flip in last byte': (flipped(len(blob) - 1), 'corrupted'),
        # 0x01: a hex digit stays printable (0x10 turns '0' into a space: another refusal)
        'bit flip in checksum': (flipped(payload_start - 5, 0x01), 'corrupted'),
        'bit flip in version': (flipped(len(checkpoint.MAGIC) + 1, 0x02), 'version'),
        'bit flip in magic': (flipped(2), 'missing header'),
        'bit flip in header syntax': (flipped(len(checkpoint.MAGIC) + 1), 'malformed header'),
        'other cut': (_state_of(LearnerConfig.from_dict(dict(
            learner_values(HARDENED), latent_layer='pool')), tmp_path_factory), 'cut'),
        'other backbone': (_state_of(LearnerConfig.from_dict(dict(
            learner_values(HARDENED), backbone='mobilenet_v3_small', latent_layer='pool',
            random_init=True)), tmp_path_factory), 'name'),
        'other class limit': (_state_of(LearnerConfig.from_dict(dict(
            learner_values(HARDENED), max_classes=5)), tmp_path_factory), 'max_classes'),
        'plain pickle that runs code': (pickle.dumps(_RunsCode(marker)), 'missing header'),
        'checksummed pickle that runs code': (_with_header(pickle.dumps(_RunsCode(marker))),
                                              'could not be read safely'),
        'torch archive that runs code': (_with_header(_torch_bytes(_RunsCode(marker))),
                                         'could not be read safely'),
        'state with code inside': (_with_header(_torch_bytes(
            dict(state, config=_RunsCode(marker)))), 'could not be read safely'),
        'not a dict': (_with_header(_torch_bytes([1, 2, 3])), 'does not hold a state'),
        'NaN weights': (tampered(nan_weights), 'NaN'),
        'replay labels beyond the classes': (tampered(labels_beyond), 'replay'),
        'class name with control characters': (
            tampered(lambda o: o['classes'].update(names=['cat', 'cof\x07fee'])), 'class name'),
        'class name too long': (
            tampered(lambda o: o['classes'].update(names=['cat', 'x' * 5000])), 'class name'),
        'registry limit differs from the head': (
            tampered(lambda o: o['classes'].update(max_classes=1000)), 'max_classes'),
        'classes without a learned step': (tampered(lambda o: o.update(steps=0)), 'steps'),
        'negative steps': (tampered(lambda o: o.update(steps=-3)), 'steps'),
    }
    return files, marker


def test_every_hostile_file_is_refused_and_the_learner_keeps_its_state(hostile_files,
                                                                       good_state, tmp_path):
    """Each file raises CheckpointError naming the file and the reason; nothing changes."""
    files, marker = hostile_files
    state, blob = good_state
    good = tmp_path / 'good.pt'
    good.write_bytes(blob)
    with ContinualLearner(CONFIG) as learner:
        learner.load(str(good))
        before = checkpoint.dumps(learner.state_dict())
        accepted = []
        for index, (name, (data, words)) in enumerate(files.items()):
            path = tmp_path / f'case{index}.pt'
            path.write_bytes(data)
            try:
                learner.load(str(path))
            except CheckpointError as exc:
                message = str(exc)
                assert str(path) in message and words in message, (name, message)
            else:
                accepted.append(name)
                learner.load(str(good))
            assert checkpoint.dumps(learner.state_dict()) == before, name
            assert path.read_bytes() == data, name
        assert not accepted, f'hostile files loaded: {accepted}'
        assert learner.known_classes == state['classes']['names']
    assert not marker.exists(), 'unpickling ran code from a state file'


def test_a_directory_or_unreadable_path_is_refused(tmp_path):
    """A directory where the state file should be is a clear refusal, not a crash."""
    (tmp_path / 'state.pt').mkdir()
    with ContinualLearner(CONFIG) as learner:
        with pytest.raises(CheckpointError, match='cannot be read'):
            learner.load(str(tmp_path / 'state.pt'))


def _start_node(state_file, **extra):
    context = Context()
    rclpy.init(context=context)
    try:
        params = [Parameter('state_file', value=str(state_file))]
        params += [Parameter(k, value=v) for k, v in dict(HARDENED, **extra).items()]
        node = LatentReplayNode(context=context, parameter_overrides=params)
    except BaseException:
        rclpy.shutdown(context=context)
        raise
    return context, node


NODE_CASES = ('truncated half', 'bit flip in payload', 'other backbone',
              'torch archive that runs code', 'NaN weights')


@pytest.mark.parametrize('case', NODE_CASES)
def test_node_refuses_to_start_unless_configured_to_start_fresh(case, hostile_files, tmp_path):
    """start_fresh_on_bad_state false: refusal, file untouched; true: moved aside, fresh."""
    files, marker = hostile_files
    data = files[case][0]
    state = tmp_path / 'state.pt'
    state.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        _start_node(state)
    message = str(info.value)
    assert 'start_fresh_on_bad_state' in message and str(state) in message
    assert state.read_bytes() == data

    context, node = _start_node(state, start_fresh_on_bad_state=True)
    try:
        assert node.learner.known_classes == [] and node.learner.steps == 0
        aside = list(tmp_path.glob('state.pt.broken-*'))
        assert len(aside) == 1 and aside[0].read_bytes() == data
        assert not state.exists()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert not marker.exists(), 'unpickling ran code from a state file'


def test_node_entry_point_exits_with_a_clear_message(hostile_files, tmp_path, capsys):
    """The console entry point prints why it cannot start and returns 1 (no traceback)."""
    files, marker = hostile_files
    state = tmp_path / 'state.pt'
    state.write_bytes(files['checksummed pickle that runs code'][0])
    args = ['latent_replay_node', '--ros-args', '-p', f'state_file:={state}']
    args += [a for k, v in HARDENED.items() for a in ('-p', f'{k}:={v}')]
    assert node_module.main(args) == 1
    err = capsys.readouterr().err
    assert 'cannot start' in err and 'start_fresh_on_bad_state' in err
    assert 'Traceback' not in err
    assert not marker.exists() and os.path.exists(state)
