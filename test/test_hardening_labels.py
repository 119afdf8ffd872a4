"""Teaching labels: empty, whitespace, huge, non-ASCII, control characters, switches, limits.

The defined behaviour (docs/HARDENING.md): an empty or whitespace-only label stops
collecting; a label is stripped and NFC-normalised; one longer than ``max_label_length``
characters or holding control, format or unassigned characters is refused with a warning and
stops collecting (frames are never attributed to a wrong class); any other Unicode text is a
class name, kept exactly through learning, saving and loading; a label switched mid-episode
splits the episode between the two classes; frames of a class beyond ``max_classes`` are
not collected and are counted, and the classes already known keep working.
"""

import threading

import numpy as np
import pytest
import torch
from rcl_interfaces.msg import Log
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from hardening_support import HARDENED
from node_harness import Harness, views, wait_for
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.errors import ClassLimitError
from ros2_latent_replay.core.learner import ContinualLearner

#: label sent -> the class the node collects under (None: not collecting) and a warning flag
CASES = [
    ('', None, False),
    ('   \t  ', None, False),
    ('\u3000\u2003', None, False),                     # Unicode spaces only
    ('mug', 'mug', False),
    ('  mug \n', 'mug', False),                         # stripped: the same class
    ('Tasse ☕ 杯子 чашка', 'Tasse ☕ 杯子 чашка', False),
    ('cafe\u0301', 'caf\u00e9', False),                 # NFD arrives as NFC
    ('\U0001F600 robot', '\U0001F600 robot', False),    # emoji are text
    ('x' * 128, 'x' * 128, False),                      # exactly max_label_length
    ('x' * 129, None, True),
    ('y' * 10240, None, True),                          # 10 kB
    ('bad\x07bell', None, True),
    ('two\nlines', None, True),
    ('tab\tinside', None, True),
    ('zero\u200bwidth', None, True),                    # format character
    ('a\x00b', 'a', False),                             # a ROS string ends at NUL
]


def _warnings(logs, node):
    return [log.msg for log in logs if log.name == node.get_logger().name
            and log.level == Log.WARN and 'ignoring label' in log.msg]


def test_each_label_case_collects_under_the_defined_class_or_not_at_all(work_dir):
    """Every label case sets the defined class or stops collecting, with a warning if refused."""
    frame = views(1, 1, 0)['cat'][0][0]
    logs = []
    with Harness(work_dir / 'state.pt', **HARDENED) as h:
        h.client.create_subscription(
            Log, '/rosout', logs.append,
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        collected = {}
        for index, (text, expected, warns) in enumerate(CASES):
            # start from a valid label, so that a refused one visibly stops collecting
            h.send_label(f'start{index}')
            before = len(_warnings(logs, h.node))
            h.label_pub.publish(String(data=text))
            wait_for(lambda: h.node.current_label == expected, what=f'label {text[:20]!r}')
            if warns:
                wait_for(lambda: len(_warnings(logs, h.node)) > before,
                         what=f'a warning about {text[:20]!r}')
            h.send_frames([frame])
            if expected is not None:
                collected[expected] = collected.get(expected, 0) + 1
        h.send_label('')
        assert h.node.wait_for_observed(60.0)
        assert h.node.counters()['callback_errors'] == 0
        # one frame per valid label; the start labels got none
        labels = h.node.learner.episode_labels
        assert [name for name in labels if not name.startswith('start')] == list(collected)
        refused = [text for text, expected, _ in CASES if expected is None and text.strip()]
        long_warning = [m for m in _warnings(logs, h.node) if 'characters long' in m]
        assert long_warning and all(len(m) < 400 for m in _warnings(logs, h.node)), \
            'a refused label is quoted in full in the log'
        assert len(_warnings(logs, h.node)) == len(refused)


def test_unicode_class_names_survive_learning_saving_and_reloading(work_dir):
    """Non-ASCII names come back byte-identical from predictions and from the state file."""
    objects = views(2, 4, 1)
    names = {'cat': 'Katze 🐈 猫', 'coffee': 'caf\u00e9 ☕'}
    state = work_dir / 'state.pt'
    with Harness(state, **HARDENED) as h:
        for key, name in names.items():
            h.teach(name, objects[key][0])
            ok, body = h.call('learn')
            assert ok and body['classes'] == [name], body
        before = h.predict_frame(objects['cat'][1][0])
        assert before['label'] in names.values()
    with Harness(state, **HARDENED) as h:
        assert h.node.learner.known_classes == list(names.values())
        after = h.predict_frame(objects['cat'][1][0])
        assert after['label'] == before['label']
        h.label_pub.publish(String(data='cafe\u0301 ☕'))   # NFD spelling: the same class
        wait_for(lambda: h.node.current_label == names['coffee'], what='the NFC label')
        h.send_frames(objects['coffee'][0][:2])
        h.send_label('')
        ok, body = h.call('learn')
        assert ok and body['new_classes'] == [] and body['classes'] == [names['coffee']]


def test_label_switched_mid_episode_splits_the_episode(work_dir):
    """Frames before a switch belong to the first label, after it to the second."""
    objects = views(2, 5, 0)
    with Harness(work_dir / 'state.pt', **dict(HARDENED, observe_batch_size=4)) as h:
        h.send_label('cat')
        h.send_frames(objects['cat'][0][:3])
        h.send_label('coffee')                      # no stop in between
        h.send_frames(objects['coffee'][0])
        h.send_label('')
        ok, body = h.call('learn')
        assert ok, body
        assert body['frames'] == 8 and body['classes'] == ['cat', 'coffee']
        labels = h.node.learner.replay_memory.labels()
        ids = {name: i for i, name in enumerate(h.node.learner.known_classes)}
        assert np.sum(labels == ids['cat']) == 3 and np.sum(labels == ids['coffee']) == 5


def test_more_classes_than_the_maximum(work_dir):
    """A class beyond max_classes is not collected, is counted and reported; others go on."""
    objects = views(4, 3, 1)
    names = list(objects)
    with Harness(work_dir / 'state.pt', **dict(HARDENED, max_classes=3)) as h:
        h.send_label(names[0])
        h.send_frames(objects[names[0]][0])
        h.send_label(names[1])
        h.send_frames(objects[names[1]][0])
        ok, body = h.call('learn')
        assert ok and body['classes'] == names[:2], body
        # one class still fits; a second new one in the same episode does not
        for name in names[2:]:
            h.send_label(name)
            h.send_frames(objects[name][0])
        h.send_label('')
        assert h.node.wait_for_observed(60.0)
        status = h.node.status()
        assert status['observe_errors'] == len(objects[names[3]][0])
        assert 'max_classes is 3' in status['last_observe_error']
        ok, body = h.call('learn')
        assert ok and body['classes'] == [names[2]], body
        assert h.node.learner.known_classes == names[:3]
        # full: a new class is refused, a known one is still taught and recognised
        h.teach(names[3], objects[names[3]][0])
        ok, body = h.call('learn')
        assert not ok and body['error'] == 'empty_episode'
        h.teach(names[0], objects[names[0]][0][:2])
        ok, body = h.call('learn')
        assert ok and body['classes'] == [names[0]]
        assert h.predict_frame(objects[names[1]][1][0])['label'] in names[:3]


def test_classes_collected_during_a_learn_that_fills_the_head_are_dropped_not_the_episode():
    """New classes that no longer fit once a running step commits lose only their own frames."""
    config = LearnerConfig(latent_layer='pool', epochs=400, replay_size=32, threads=1,
                           max_classes=2)
    generator = torch.Generator().manual_seed(0)
    with ContinualLearner(config) as learner:
        latents = torch.randn(9, *learner.latent_shape, generator=generator)
        learner.observe_latents(latents[:3], 'a')
        results = []
        step = threading.Thread(target=lambda: results.append(learner.learn()))
        step.start()
        try:
            wait_for(lambda: learner.stats()['learning'], what='the first step to run')
            # the head still looks empty: both fit now, only one will after the step
            learner.observe_latents(latents[3:6], 'b')
            learner.observe_latents(latents[6:], 'c')
            assert learner.stats()['learning'], 'the first step ended too early for this test'
        finally:
            step.join(120.0)
        assert results and learner.known_classes == ['a']
        summary = learner.learn()
        assert summary['classes'] == ['b'] and summary['frames'] == 3
        assert summary['refused_classes'] == ['c'] and summary['refused_frames'] == 3
        assert learner.known_classes == ['a', 'b']
        with pytest.raises(ClassLimitError):
            learner.observe_latents(latents[6:], 'c')
