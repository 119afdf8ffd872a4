"""latent_replay_node in its own process, a client in this one, over real DDS.

Also the node's life cycle as a process: clean exit on SIGINT and SIGTERM (also in the
middle of a learning step), its replay shared memory removed, and a state file that still
loads after the process is killed with SIGKILL while learning.
"""

import json
import os
import signal
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from conftest import REPO, start_process, stop_process
from node_harness import FAST, views
from ros2_latent_replay.core.config import LearnerConfig
from ros2_latent_replay.core.learner import ContinualLearner
from ros2_latent_replay.demo import image_message

NODE = '/latent_replay_node'


class RemoteNode:
    """Start the node process; talk to it from a client node in this process."""

    def __init__(self, state_file, **overrides):
        """Start ``latent_replay_node`` with the package params file plus ``overrides``."""
        args = [sys.executable, '-m', 'ros2_latent_replay.node', '--ros-args',
                '--params-file', str(REPO / 'config' / 'params.yaml'),
                '-p', f'state_file:={state_file}']
        for name, value in overrides.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            args += ['-p', f'{name}:={text}']
        self.process = start_process(args, cwd=str(REPO))
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node('test_remote_client', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.image_pub = self.node.create_publisher(
            Image, 'image', QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE))
        self.label_pub = self.node.create_publisher(
            String, 'label', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.clients = {name: self.node.create_client(Trigger, f'{NODE}/{name}')
                        for name in ('learn', 'predict', 'save', 'reset')}
        self.status = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_status, 10)
        self._stamp = 0

    def _on_status(self, msg):
        for item in msg.status:
            if item.hardware_id == NODE:
                self.status = {kv.key: kv.value for kv in item.values}

    def wait(self, condition, timeout=60.0, what='condition'):
        """Spin the client until ``condition()``; fail on timeout or if the node died."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f'node exited with {self.process.returncode}'
            assert time.monotonic() < deadline, f'timed out waiting for {what}'
            self.executor.spin_once(timeout_sec=0.05)

    def wait_ready(self):
        """Wait for discovery: services, topic matches and a first /diagnostics report."""
        self.wait(lambda: all(c.service_is_ready() for c in self.clients.values())
                  and self.image_pub.get_subscription_count() > 0
                  and self.label_pub.get_subscription_count() > 0 and self.status,
                  timeout=180.0, what='the node process to come up')

    def teach(self, name, frames):
        """Label, paced frames, stop label; wait until the node collected them all."""
        self.label_pub.publish(String(data=name))
        self.wait(lambda: self.status.get('label') == name, what=f'label {name!r}')
        for frame in frames:
            collected = int(self.status['frames_received'])
            self._stamp += 1
            self.image_pub.publish(image_message(frame, stamp_ns=self._stamp))
            self.wait(lambda c=collected: int(self.status['frames_received']) > c,
                      what='a frame to arrive')
        self.label_pub.publish(String(data=''))
        self.wait(lambda: self.status.get('label') == '', what='the label to clear')

    def call_async(self, name):
        """Start a Trigger call."""
        return self.clients[name].call_async(Trigger.Request())

    def call(self, name, timeout=240.0):
        """Call a Trigger service; return (success, JSON body)."""
        future = self.call_async(name)
        self.wait(future.done, timeout, f'~/{name}')
        return future.result().success, json.loads(future.result().message)

    def close(self):
        """Destroy the client; stop the node process if it still runs."""
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        return stop_process(self.process)


def _segment_of(pid):
    return [name for name in os.listdir('/dev/shm') if name.startswith(f'ros2lr_{pid}_')]


def _learner_config(**extra):
    values = {k: v for k, v in dict(FAST, **extra).items()
              if k in LearnerConfig.__dataclass_fields__}
    return LearnerConfig.from_dict(values)


def test_node_process_teach_learn_predict_and_sigint(work_dir):
    """Teach and query a node in another process over DDS; SIGINT ends it cleanly."""
    objects = views(2, 5, 1)
    state = work_dir / 'state.pt'
    remote = RemoteNode(state, **FAST)
    try:
        remote.wait_ready()
        assert _segment_of(remote.process.pid), 'the node has no replay segment'
        for name, (train, _) in objects.items():
            remote.teach(name, train)
            ok, body = remote.call('learn')
            assert ok, body
            assert body['frames'] == len(train) and name in body['classes']
        frame = objects['cat'][1][0]
        remote._stamp += 1
        stamp = remote._stamp * 1e-9
        remote.image_pub.publish(image_message(frame, stamp_ns=remote._stamp))
        answers = []

        def answered():
            ok, body = remote.call('predict')
            answers.append(body)
            return ok and abs(body['stamp'] - stamp) < 1e-12
        remote.wait(answered, what='a prediction of the test frame')
        assert answers[-1]['label'] in objects
        remote.wait(lambda: remote.status.get('known_classes') == 'cat, coffee',
                    what='known classes in /diagnostics')
    finally:
        pid = remote.process.pid
        code = remote.close()
    assert code == 0
    assert not _segment_of(pid), 'replay shared memory left behind after SIGINT'
    with ContinualLearner(_learner_config()) as learner:
        learner.load(str(state))
        assert sorted(learner.known_classes) == sorted(objects)


def test_sigterm_while_learning_exits_cleanly(work_dir):
    """SIGTERM in the middle of a learning step: the process exits and frees its memory."""
    frames = views(1, 16, 0)['cat'][0]
    remote = RemoteNode(work_dir / 'state.pt', **dict(FAST, epochs=200))
    try:
        remote.wait_ready()
        remote.teach('cat', frames)
        remote.call_async('learn')
        remote.wait(lambda: remote.status.get('learning') == 'True', what='learning')
        remote.process.send_signal(signal.SIGTERM)
        code = remote.process.wait(60)
    finally:
        pid = remote.process.pid
        remote.close()
    assert code == 0
    assert not _segment_of(pid), 'replay shared memory left behind after SIGTERM'


def test_state_file_loads_after_sigkill_while_learning(work_dir):
    """Killing the node during learn leaves the last saved state loadable."""
    objects = views(2, 12, 0)
    (first, (first_frames, _)), (second, (second_frames, _)) = objects.items()
    state = work_dir / 'state.pt'
    remote = RemoteNode(state, **dict(FAST, epochs=80))
    try:
        remote.wait_ready()
        remote.teach(first, first_frames[:2])
        ok, body = remote.call('learn')
        assert ok, body
        remote.teach(second, second_frames)
        remote.call_async('learn')
        remote.wait(lambda: remote.status.get('learning') == 'True', what='learning')
        os.killpg(remote.process.pid, signal.SIGKILL)
        remote.process.wait(30)
    finally:
        remote.close()
    with ContinualLearner(_learner_config(epochs=80)) as learner:   # also clears stale memory
        learner.load(str(state))
        assert learner.known_classes == [first]
