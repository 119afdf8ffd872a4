"""In-process harness: the node and a client node on the node's real executor.

Each harness has its own rclpy Context, so tests do not share ROS state. The executor spins
in a background thread; the test thread talks to the node through real topics and services
(the client node) and waits on conditions with timeouts, never with fixed sleeps.
"""

import json
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ros2_latent_replay.demo import image_message, skimage_views
from ros2_latent_replay.callback_executor import CallbackPoolExecutor
from ros2_latent_replay.node import CALLBACK_THREADS, LatentReplayNode

#: a small, fast configuration for tests where the defaults do not matter
FAST = {'epochs': 1, 'replay_size': 64, 'max_classes': 8, 'diagnostics_period': 0.2,
        'prediction_rate': 10.0}

_views_cache = {}


def views(objects=3, train=6, test=3):
    """Real photos (scikit-image samples) from several viewpoints, cached per shape."""
    key = (objects, train, test)
    if key not in _views_cache:
        _views_cache[key] = skimage_views(objects, train, test, seed=1)
    return _views_cache[key]


def wait_for(condition, timeout=30.0, interval=0.02, what='condition'):
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(interval)


class Harness:
    """A LatentReplayNode plus a client node, both spun by one CallbackPoolExecutor."""

    def __init__(self, state_file, **overrides):
        """Start the node with ``state_file`` and parameter ``overrides``."""
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = None
        try:
            params = [Parameter('state_file', value=str(state_file))]
            params += [Parameter(name, value=value) for name, value in overrides.items()]
            self.node = LatentReplayNode(context=self.context, parameter_overrides=params)
        except BaseException:
            rclpy.shutdown(context=self.context)
            raise
        self.client = Node('test_client', context=self.context)
        self.image_pub = self.client.create_publisher(
            Image, 'image', QoSProfile(depth=64, reliability=ReliabilityPolicy.RELIABLE))
        self.label_pub = self.client.create_publisher(
            String, 'label', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.services = {name: self.client.create_client(Trigger, f'/latent_replay_node/{name}')
                         for name in ('learn', 'predict', 'save', 'reset')}
        self.predictions = []
        self.diagnostics = []
        self.client.create_subscription(String, '/latent_replay_node/prediction',
                                        lambda m: self.predictions.append(json.loads(m.data)),
                                        10)
        self.client.create_subscription(DiagnosticArray, '/diagnostics',
                                        self.diagnostics.append, 10)
        # the node's four callback groups plus the client's default group
        self.executor = CallbackPoolExecutor(num_threads=CALLBACK_THREADS + 1,
                                             context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._stamp = 0
        wait_for(lambda: all(c.service_is_ready() for c in self.services.values()),
                 what='the node services')
        wait_for(lambda: self.image_pub.get_subscription_count() > 0
                 and self.label_pub.get_subscription_count() > 0, what='topic matching')

    # ------------------------------------------------------------------ teaching
    def send_label(self, text):
        """Publish a label and wait until the node uses it."""
        self.label_pub.publish(String(data=text))
        expected = text.strip() or None
        wait_for(lambda: self.node.current_label == expected, what=f'label {text!r}')

    def send_frames(self, frames, encoding='rgb8'):
        """Publish frames one at a time, each once the node has received the previous one.

        The image subscription is best-effort with a short queue (sensor-data QoS), as for a
        camera; pacing keeps a burst from overrunning it, so every frame counts.
        """
        for frame in frames:
            before = self.node.counters()['frames_received']
            self.publish_frame(frame, encoding)
            wait_for(lambda: self.node.counters()['frames_received'] > before,
                     what='a frame to arrive')

    def publish_frame(self, frame, encoding='rgb8'):
        """Publish one frame with a fresh stamp; return the stamp in seconds."""
        self._stamp += 1
        self.image_pub.publish(image_message(frame, encoding, stamp_ns=self._stamp))
        return self._stamp * 1e-9

    def teach(self, name, frames):
        """Label, frames, stop label: one object's teaching episode."""
        self.send_label(name)
        self.send_frames(frames)
        self.send_label('')

    # ------------------------------------------------------------------ services
    def call_async(self, name):
        """Start a Trigger call; return its future."""
        return self.services[name].call_async(Trigger.Request())

    def call(self, name, timeout=240.0):
        """Call a Trigger service; return (success, JSON body)."""
        future = self.call_async(name)
        wait_for(future.done, timeout, what=f'~/{name} to answer')
        response = future.result()
        return response.success, json.loads(response.message)

    def predict_frame(self, frame, encoding='rgb8'):
        """Publish ``frame`` and return ~/predict's answer about exactly that frame."""
        stamp = self.publish_frame(frame, encoding)
        wait_for(lambda: self.node.newest_stamp is not None
                 and abs(self.node.newest_stamp - stamp) < 1e-12, what='the test frame')
        ok, body = self.call('predict')
        assert ok, body
        assert abs(body['stamp'] - stamp) < 1e-12
        return body

    # ------------------------------------------------------------------ teardown
    def close(self):
        """Stop spinning, destroy the nodes, shut the context down."""
        try:
            self.executor.shutdown(timeout_sec=10.0)
            self._thread.join(10.0)
        finally:
            self.client.destroy_node()
            self.node.destroy_node()
            rclpy.shutdown(context=self.context)

    def __enter__(self):
        """Use as a context manager."""
        return self

    def __exit__(self, *exc):
        """Close on exit."""
        self.close()


def frames_equal(first, second):
    """Whether two frame lists hold the same pixels."""
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in
                                             zip(first, second))
