"""Scenario -> rosbag2 (mcap, sqlite3), read back with rosbags' AnyReader; bags as sources."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.errors import LatentReplayError
from ros2_latent_replay.core.evaluation import ScenarioSource, evaluate
from ros2_latent_replay.core.scenario import read_scenario
from ros2_latent_replay.evaluation import bag_format as fmt
from ros2_latent_replay.evaluation import bag_writer
from ros2_latent_replay.evaluation.bag_reader import BagIndex, BagSource

DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
RUN0 = DATA / 'coil100' / 'NIC_coil' / 'run0'
IMAGES = DATA / 'coil100' / 'images'
PERIOD_NS = 50_000_000     # 20 fps
TEST_STRIDE = 16

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def scenario():
    if not RUN0.is_dir() or not IMAGES.is_dir():
        pytest.skip(f'NIC_coil not found at {RUN0} (../shared/data absent)')
    return read_scenario(RUN0, IMAGES, max_batches=3)


@pytest.fixture(scope='module')
def mcap_bag(scenario, tmp_path_factory):
    path = tmp_path_factory.mktemp('bags') / 'nic_coil_run0'
    summary = bag_writer.write_bag(scenario, path, test_stride=TEST_STRIDE, progress=False)
    return path, summary


def _read_all(path):
    """Every message of a bag, deserialized, in time order: (topic, time, msgtype, msg)."""
    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        return [(c.topic, t, c.msgtype, reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]


def test_the_bag_is_a_standard_rosbag2_with_the_documented_layout(mcap_bag, scenario):
    path, summary = mcap_bag
    assert (path / 'metadata.yaml').is_file() and list(path.glob('*.mcap'))
    assert 'storage_identifier: mcap' in (path / 'metadata.yaml').read_text()
    messages = _read_all(path)
    types = {topic: msgtype for topic, _, msgtype, _ in messages}
    assert types == {fmt.IMAGE_TOPIC: 'sensor_msgs/msg/Image',
                     fmt.LABEL_TOPIC: 'std_msgs/msg/String',
                     fmt.MARKER_TOPIC: 'std_msgs/msg/String'}
    images = [(t, m) for topic, t, _, m in messages if topic == fmt.IMAGE_TOPIC]
    test_count = len(scenario.test[::TEST_STRIDE])
    assert len(images) == scenario.num_training_frames + test_count
    assert summary['training_frames'] == scenario.num_training_frames == 216
    assert summary['test_frames'] == test_count and summary['bytes'] > len(images) * 49_152
    for stamp, msg in images:
        assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 128, 128, 384)
        assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == stamp
        assert msg.header.frame_id == 'camera'
    # the pixels are the scenario's, in the scenario's order
    frames, _ = scenario.load_entries(scenario.batches[1])
    first_of_batch1 = 180
    for offset in range(len(frames)):
        data = images[first_of_batch1 + offset][1].data.reshape(128, 128, 3)
        assert np.array_equal(data, frames[offset])
    # paced like a 20 fps camera within a batch
    gaps = np.diff([t for t, _ in images[:180]])
    assert set(gaps.tolist()) <= {PERIOD_NS, 2 * PERIOD_NS}    # a label change takes one slot


def test_labels_and_markers_follow_the_timeline(mcap_bag, scenario):
    path, _ = mcap_bag
    events = []
    for topic, stamp, _, msg in _read_all(path):
        if topic == fmt.LABEL_TOPIC:
            events.append(('label', stamp, msg.data))
        elif topic == fmt.MARKER_TOPIC:
            events.append(('marker', stamp, json.loads(msg.data)))
        else:
            events.append(('image', stamp, None))
    assert events[0][0] == 'marker' and events[0][2]['event'] == 'scenario'
    assert events[0][2]['format'] == fmt.FORMAT and events[0][2]['batches'] == 3
    learn = [e for e in events if e[0] == 'marker' and e[2]['event'] == 'learn']
    assert [m['frames'] for _, _, m in learn] == [180, 18, 18]
    assert learn[1][2]['labels'] == [scenario.class_name(scenario.batches[1][0][1])]
    # batch 0: ten objects, ten labels, then the empty label, then the learn marker
    first_learn = events.index(learn[0])
    labels0 = [e[2] for e in events[:first_learn] if e[0] == 'label']
    assert len(labels0) == 11 and labels0[-1] == '' and all(labels0[:-1])
    assert events[first_learn - 1] == ('label', learn[0][1] - PERIOD_NS, '')
    # every image before the test section plays while a label is set
    label = ''
    for kind, _, value in events:
        if kind == 'label':
            label = value
        elif kind == 'marker' and value['event'] == 'test_begin':
            break
        elif kind == 'image':
            assert label
    tests = [e[2] for e in events if e[0] == 'marker' and e[2]['event'] == 'test_frame']
    expected = scenario.test[::TEST_STRIDE]
    assert [t['label'] for t in tests] == [scenario.class_name(lbl) for _, lbl in expected]
    image_times = {e[1] for e in events if e[0] == 'image'}
    assert all(t['stamp_ns'] in image_times for t in tests)
    assert events[-1][2] == {'event': 'end'}


def test_bag_source_gives_the_scenarios_frames_and_labels(mcap_bag, scenario):
    path, _ = mcap_bag
    source = BagSource(path)
    reference = ScenarioSource(scenario, test_stride=TEST_STRIDE)
    assert source.num_batches == 3
    for index in range(3):
        frames, names = source.load_batch(index)
        expected_frames, expected_names = reference.load_batch(index)
        assert names == expected_names == source.batch_labels(index)
        assert np.array_equal(frames, expected_frames)
    frames, names = source.load_test()
    expected_frames, expected_names = reference.load_test()
    assert names == expected_names and np.array_equal(frames, expected_frames)
    assert BagSource(path, max_batches=2).num_batches == 2


def test_offline_evaluation_of_the_bag_equals_the_scenarios(mcap_bag, scenario):
    path, _ = mcap_bag
    config = LearnerConfig(latent_layer='blocks.6.0', epochs=1, threads=1, lr_incremental=1e-3)
    from_bag = evaluate(BagSource(path, max_batches=2), config, progress=False)
    from_scenario = evaluate(ScenarioSource(read_scenario(RUN0, IMAGES, max_batches=2),
                                            test_stride=TEST_STRIDE), config, progress=False)
    for a, b in zip(from_bag['batches'], from_scenario['batches']):
        assert (a['loss'], a['accuracy'], a['known_classes'], a['replay_fill']) == \
            (b['loss'], b['accuracy'], b['known_classes'], b['replay_fill'])
    assert from_bag['source']['kind'] == 'bag'


def test_sqlite3_with_a_separate_test_bag(scenario, tmp_path):
    train, test = tmp_path / 'train', tmp_path / 'test'
    code = bag_writer.main(['--scenario', str(RUN0), '--images', str(IMAGES), '--out',
                            str(train), '--test-out', str(test), '--storage', 'sqlite3',
                            '--max-batches', '2', '--test-stride', '32', '--no-progress'])
    assert code == 0
    assert list(train.glob('*.db3')) and list(test.glob('*.db3'))
    train_index, test_index = BagIndex(train), BagIndex(test)
    assert train_index.test == [] and len(train_index.batches) == 2
    assert train_index.scenario['test'] == 'separate'
    assert len(test_index.test) == len(scenario.test[::32]) and test_index.batches == []
    source = BagSource(train, test_bag=test)
    assert source.test_labels == [scenario.class_name(lbl) for _, lbl in scenario.test[::32]]
    with pytest.raises(fmt.BagFormatError, match='no test frames'):
        BagSource(train)


def test_writer_refuses_to_overwrite_and_reader_refuses_foreign_bags(mcap_bag, tmp_path,
                                                                     capsys):
    path, _ = mcap_bag
    code = bag_writer.main(['--scenario', str(RUN0), '--images', str(IMAGES), '--out',
                            str(path), '--max-batches', '1', '--no-progress'])
    assert code == 2 and '--overwrite' in capsys.readouterr().err
    with pytest.raises(LatentReplayError, match='fps'):
        bag_writer.write_bag(read_scenario(RUN0, IMAGES, max_batches=1), tmp_path / 'x',
                             fps=0.0, progress=False)
    foreign = tmp_path / 'foreign'
    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(foreign, version=8) as writer:
        connection = writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=store)
        msg = store.types['std_msgs/msg/String'](data='hello')
        writer.write(connection, 1, store.serialize_cdr(msg, 'std_msgs/msg/String'))
    with pytest.raises(fmt.BagFormatError, match='not an evaluation bag'):
        BagIndex(foreign)
    with pytest.raises(fmt.BagFormatError, match='does not exist'):
        BagIndex(tmp_path / 'nothing')


def test_markers_are_checked():
    assert fmt.parse_marker(fmt.marker_text('learn', batch=1, frames=2, labels=['a'])) == \
        {'event': 'learn', 'batch': 1, 'frames': 2, 'labels': ['a']}
    with pytest.raises(ValueError):
        fmt.marker_text('learn', batch=1)
    with pytest.raises(fmt.BagFormatError):
        fmt.parse_marker('{"event": "dance"}')
    with pytest.raises(fmt.BagFormatError):
        fmt.parse_marker('not json')
