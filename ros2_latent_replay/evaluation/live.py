"""``latent-replay-play-bag``: play an evaluation bag into a running node and evaluate it live.

The bag (layout in :mod:`.bag_format`) is played through rclpy, paced by its timestamps:
images on ``/camera/image_raw``, labels on ``/label``. At every ``learn`` marker the player
calls the node's ``~/learn`` and waits for the answer (it reports how many frames the node
learned, so lost frames are counted). At every evaluation point it sends the test frames one
at a time, each followed by ``~/predict`` calls until the node answers about exactly that
frame (the answer's ``stamp`` equals the frame's header stamp; a frame the node did not get
is sent again). Bag time spent waiting for the node is not played as idle time: after a
learn/test pause the playback clock restarts at the next message.

The node is either already running (its ``image`` input remapped to ``/camera/image_raw``,
fresh or reset with ``--reset``) or started by the tool (``--start-node``, with a temporary
state file, no autosave). Results: the same JSON and PNG as ``latent-replay-eval``;
``--compare-offline`` also runs the offline evaluator on the same bag and configuration and
reports the difference.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import bag_format as fmt
from .bag_reader import BagIndex, BagSource, iter_raw
from ..core.class_registry import normalize_label
from ..core.config import LearnerConfig
from ..core.errors import LatentReplayError
from ..core.evaluation import evaluate, load_config, parse_override, plot_results, \
    results_document, write_results

DEFAULT_NODE = '/latent_replay_node'
#: seconds to wait for the node's services (a started node builds its network first)
SERVICE_TIMEOUT_S = 180.0
#: seconds one ~/learn may take
LEARN_TIMEOUT_S = 1800.0
#: a test frame not answered about within this many seconds is sent again
RESEND_AFTER_S = 0.5
#: how often a test frame is sent before giving up
MAX_SENDS = 10
#: seconds to wait for the node's status to show a label or a frame count (see _Sync)
SYNC_TIMEOUT_S = 10.0
#: images sent but not yet handled by the node, at most (its subscription keeps 5)
WINDOW = 4
#: answers whose stamp differs from the frame's by less than this are about that frame
STAMP_TOLERANCE_S = 1e-4


class LiveEvaluationError(LatentReplayError):
    """The node refused a call, vanished, or the bag could not be played."""


def _wait(condition: Callable[[], Any], timeout: float, what: str,
          alive: Optional[Callable[[], None]] = None, interval: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise LiveEvaluationError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(interval)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), 'f')
        return text if '.' in text else text + '.0'
    return "'" + str(value).replace("'", "''") + "'"


class NodeProcess:
    """``latent_replay_node`` in its own process, with a given learner configuration."""

    def __init__(self, config: LearnerConfig, work_dir: Path, node_name: str = DEFAULT_NODE,
                 image_topic: str = fmt.IMAGE_TOPIC, label_topic: str = fmt.LABEL_TOPIC
                 ) -> None:
        """Write its parameters file and start it (stdout/stderr go to ``node.log``)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        params = {**config.to_dict(), 'state_file': str(work_dir / 'state.pt'),
                  'autosave': False, 'prediction_rate': 0.0, 'diagnostics_period': 0.2}
        lines = ['/**:', '  ros__parameters:']
        lines += [f'    {key}: {_yaml_scalar(value)}' for key, value in params.items()]
        self.params_file = work_dir / 'node_params.yaml'
        self.params_file.write_text('\n'.join(lines) + '\n', encoding='utf-8')
        self.log_path = work_dir / 'node.log'
        self._log = open(self.log_path, 'wb')
        command = [sys.executable, '-m', 'ros2_latent_replay.node', '--ros-args',
                   '--params-file', str(self.params_file),
                   '-r', f'__node:={node_name.strip("/").split("/")[-1]}',
                   '-r', f'image:={image_topic}', '-r', f'label:={label_topic}']
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=dict(os.environ))

    def check_alive(self) -> None:
        """Raise with the end of the node's log if it exited."""
        code = self.process.poll()
        if code is not None:
            self._log.flush()
            tail = self.log_path.read_text(errors='replace')[-2000:]
            raise LiveEvaluationError(f'the node exited with code {code}; its log:\n{tail}')

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGINT, then SIGKILL its process group if it does not exit in time."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(10)
            return self.process.returncode
        finally:
            self._log.close()


class LivePlayer:
    """An rclpy node that plays evaluation bags into ``latent_replay_node`` and scores it."""

    def __init__(self, node_name: str = DEFAULT_NODE, image_topic: str = fmt.IMAGE_TOPIC,
                 label_topic: str = fmt.LABEL_TOPIC,
                 alive: Optional[Callable[[], None]] = None) -> None:
        """Create the ROS context, publishers and service clients (nothing is waited for)."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import GetParameters
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self._trigger = Trigger
        self._get_parameters = GetParameters
        self._string = String
        self.target = '/' + node_name.strip('/')
        self._alive = alive
        self.context = Context()
        rclpy.init(args=['latent-replay-play-bag'], context=self.context)
        try:
            self.node = rclpy.create_node('latent_replay_bag_player', context=self.context)
            self.image_pub = self.node.create_publisher(Image, image_topic,
                                                        qos_profile_sensor_data)
            self.label_pub = self.node.create_publisher(
                String, label_topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            self.clients = {name: self.node.create_client(Trigger, f'{self.target}/{name}')
                            for name in ('learn', 'predict', 'reset')}
            self.param_client = self.node.create_client(GetParameters,
                                                        f'{self.target}/get_parameters')
            self._diagnostics: Dict[str, str] = {}
            self._diagnostics_time = 0.0
            self._diagnostics_lock = threading.Lock()
            self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                          10)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
            self._thread = threading.Thread(target=self.executor.spin, daemon=True)
            self._thread.start()
        except BaseException:
            rclpy.shutdown(context=self.context)
            raise

    # ------------------------------------------------------------------ plumbing
    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id == self.target or status.name.startswith(
                    self.target.strip('/').split('/')[-1] + ':'):
                with self._diagnostics_lock:
                    self._diagnostics = {kv.key: kv.value for kv in status.values}
                    self._diagnostics_time = time.monotonic()

    def diagnostics(self, since: float = 0.0) -> Dict[str, str]:
        """Return the node's newest /diagnostics values if received after ``since``, else {}."""
        with self._diagnostics_lock:
            return dict(self._diagnostics) if self._diagnostics_time > since else {}

    def _status_where(self, predicate: Callable[[Dict[str, str]], bool], timeout: float,
                      since: float = 0.0) -> Optional[Dict[str, str]]:
        """Wait for a /diagnostics status received after ``since`` that fits ``predicate``.

        Returns None on timeout.
        """
        def check():
            values = self.diagnostics(since)
            return values if values and predicate(values) else None
        try:
            return _wait(check, timeout, 'the node status', self._check, interval=0.005)
        except LiveEvaluationError:
            return None

    def _check(self) -> None:
        if self._alive is not None:
            self._alive()

    def wait_ready(self, timeout: float = SERVICE_TIMEOUT_S) -> None:
        """Wait for the node's services and for both topics to be matched."""
        _wait(lambda: all(c.service_is_ready() for c in self.clients.values()), timeout,
              f'the services of {self.target} (is the node running? ROS_DOMAIN_ID and '
              f'ROS_AUTOMATIC_DISCOVERY_RANGE must match)', self._check, interval=0.05)
        _wait(lambda: self.image_pub.get_subscription_count() > 0, 30.0,
              f'a subscriber on {self.image_pub.topic_name} (remap the node: '
              f'-r image:={self.image_pub.topic_name})', self._check, interval=0.02)
        _wait(lambda: self.label_pub.get_subscription_count() > 0, 30.0,
              f'a subscriber on {self.label_pub.topic_name}', self._check, interval=0.02)

    def call(self, name: str, timeout: float) -> Tuple[bool, Dict[str, Any]]:
        """Call a Trigger service of the node; return (success, JSON body)."""
        future = self.clients[name].call_async(self._trigger.Request())
        _wait(future.done, timeout, f'{self.target}/{name} to answer', self._check,
              interval=0.001)
        response = future.result()
        try:
            body = json.loads(response.message) if response.message else {}
        except ValueError:
            body = {'detail': response.message}
        return bool(response.success), body

    def node_config(self, timeout: float = 10.0) -> Dict[str, Any]:
        """Read the node's learner settings with the standard get_parameters service."""
        if not self.param_client.wait_for_service(timeout_sec=timeout):
            return {}
        names = [f.name for f in fields(LearnerConfig)]
        future = self.param_client.call_async(self._get_parameters.Request(names=names))
        try:
            _wait(future.done, timeout, 'get_parameters', self._check, interval=0.005)
        except LiveEvaluationError:
            return {}
        values = {}
        for name, value in zip(names, future.result().values):
            kind = value.type
            if kind == 1:
                values[name] = value.bool_value
            elif kind == 2:
                values[name] = value.integer_value
            elif kind == 3:
                values[name] = value.double_value
            elif kind == 4:
                values[name] = value.string_value
        return values

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        import rclpy
        try:
            self.executor.shutdown(timeout_sec=5.0)
            self._thread.join(5.0)
        finally:
            self.node.destroy_node()
            rclpy.shutdown(context=self.context)

    # ------------------------------------------------------------------ evaluation
    def ensure_fresh(self, reset: bool, timeout: float = 5.0) -> None:
        """Refuse a node that already learned something, unless ``reset`` (then reset it)."""
        if reset:
            ok, body = self.call('reset', 120.0)
            if not ok:
                raise LiveEvaluationError(f'~/reset failed: {body}')
            return
        try:
            values = _wait(self.diagnostics, timeout, '/diagnostics', self._check, 0.05)
        except LiveEvaluationError:
            print('warning: no /diagnostics from the node; cannot check that it is fresh',
                  file=sys.stderr)
            return
        steps = int(values.get('steps', '0') or 0)
        if steps > 0:
            raise LiveEvaluationError(
                f'{self.target} has already learned {steps} steps '
                f'(classes: {values.get("known_classes", "?")}); pass --reset to reset it '
                f'first (the node keeps a backup of its state) or start a fresh node')

    def evaluate_bag(self, bag, test_bag=None, eval_every: int = 1, rate: float = 1.0,
                     max_batches: Optional[int] = None, test_stride: int = 1,
                     learn_timeout: float = LEARN_TIMEOUT_S, progress: bool = True,
                     name: str = 'live', sync_timeout: float = SYNC_TIMEOUT_S,
                     window: int = WINDOW) -> Dict[str, Any]:
        """Play ``bag`` into the node; return a run record like the offline evaluator's."""
        from rclpy.serialization import deserialize_message

        if rate <= 0:
            raise LiveEvaluationError('rate must be > 0')
        index = BagIndex(bag, max_batches=max_batches)
        test_path = Path(test_bag) if test_bag else Path(bag)
        test_index = BagIndex(test_path) if test_bag else index
        tests = test_index.test[::max(1, int(test_stride))]
        if not tests:
            raise LiveEvaluationError(f'{test_path} holds no test frames (pass --test-bag)')
        wanted = {t.stamp_ns for t in tests}
        raw_tests: Dict[int, bytes] = {}
        for topic, stamp, raw in iter_raw(test_path, start=min(wanted), stop=max(wanted) + 1):
            if topic == fmt.IMAGE_TOPIC and stamp in wanted:
                raw_tests[stamp] = raw
        # class names as the node normalises them (NFC, no surrounding blanks)
        test_set = [(t.stamp_ns, raw_tests[t.stamp_ns], normalize_label(t.label, 4096))
                    for t in tests]
        stop = index.test_begin_ns if not test_bag else None
        last_batch = len(index.batches) - 1
        started = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(index.batches), desc=f'{name} {Path(bag).name}', unit='batch',
                       mininterval=1.0)
        batches: List[Dict[str, Any]] = []
        totals = {'train': 0.0, 'eval': 0.0, 'resent': 0, 'lost': 0, 'sync_timeouts': 0}
        # a status message sent from now on carries the node's current counters
        self._status_where(lambda v: True, 5.0, since=time.monotonic())
        sync = _Sync(self, sync_timeout, window)
        anchor: Optional[Tuple[float, int]] = None
        try:
            for topic, stamp, raw in iter_raw(bag, stop=stop):
                if anchor is None:
                    anchor = (time.monotonic(), stamp)
                delay = anchor[0] + (stamp - anchor[1]) / 1e9 / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if topic == fmt.IMAGE_TOPIC:
                    if sync.before_image():
                        anchor = None   # throttled: keep the pace from here on
                    self.image_pub.publish(raw)
                    sync.sent_image()
                    continue
                if topic == fmt.LABEL_TOPIC:
                    self.label_pub.publish(raw)
                    if sync.label(deserialize_message(raw, self._string).data):
                        anchor = None   # waited: play the next frame now, then keep the pace
                    continue
                marker = fmt.parse_marker(deserialize_message(raw, self._string).data)
                if marker['event'] != 'learn':
                    continue
                batch = int(marker['batch'])
                if batch > last_batch:
                    break
                sync.before_learn()
                record = self._learn(marker, learn_timeout, totals)
                if record['learned'] and ((batch + 1) % eval_every == 0 or batch == last_batch):
                    t0 = time.perf_counter()
                    resent = totals['resent']
                    record['accuracy'] = round(self._test(test_set, totals), 4)
                    record['eval_seconds'] = round(time.perf_counter() - t0, 4)
                    totals['eval'] += record['eval_seconds']
                    sync.after_test(len(test_set), totals['resent'] - resent)
                batches.append(record)
                if bar is not None:
                    bar.update(1)
                    if 'accuracy' in record:
                        bar.set_postfix(acc=f'{record["accuracy"]:.1f}%',
                                        classes=record['known_classes'])
                anchor = None   # do not play the time spent waiting as idle bag time
                if batch == last_batch:
                    break
        finally:
            if bar is not None:
                bar.close()
        totals['sync_timeouts'] = sync.timeouts
        if len(batches) < len(index.batches):
            raise LiveEvaluationError(f'the bag ended after {len(batches)} of '
                                      f'{len(index.batches)} batches')
        curve = [b['accuracy'] for b in batches if 'accuracy' in b]
        final = next((b['accuracy'] for b in reversed(batches) if 'accuracy' in b),
                     float('nan'))
        config = self.node_config()
        return {
            'name': name,
            'source': {'kind': 'bag', 'name': str(index.scenario.get('name') or
                                                  Path(bag).name),
                       'bag': str(bag), 'test_bag': str(test_path), 'batches': len(batches),
                       'training_frames': index.training_frames, 'test_frames': len(test_set),
                       'test_stride': int(test_stride)},
            'config': config, 'seed': config.get('seed'), 'eval_every': int(eval_every),
            'test_frames': len(test_set), 'batches': batches,
            'final_accuracy': round(final, 4),
            'mean_accuracy': round(sum(curve) / len(curve), 4) if curve else float('nan'),
            'known_classes': batches[-1]['known_classes'] if batches else 0,
            'replay_fill': batches[-1]['replay_fill'] if batches else 0,
            'frames_dropped': sum(b['dropped'] for b in batches),
            'total_train_seconds': round(totals['train'], 3),
            'total_encode_seconds': None,
            'total_eval_seconds': round(totals['eval'], 3),
            'wall_seconds': round(time.perf_counter() - started, 3),
            'live': {'node': self.target, 'playback_rate': rate,
                     'frames_lost': totals['lost'], 'test_frames_resent': totals['resent'],
                     'synchronised': sync.enabled, 'window': window if sync.enabled else 0,
                     'sync_timeouts': totals['sync_timeouts']},
        }

    def _learn(self, marker: Dict[str, Any], timeout: float,
               totals: Dict[str, Any]) -> Dict[str, Any]:
        expected = int(marker['frames'])
        record: Dict[str, Any] = {'batch': int(marker['batch']), 'frames': expected,
                                  'labels': list(marker['labels'])}
        t0 = time.perf_counter()
        ok, body = self.call('learn', timeout)
        seconds = time.perf_counter() - t0
        if not ok:
            if expected == 0 and body.get('error') == 'empty_episode':
                record.update(learned=False, kept=0, dropped=0, train_seconds=0.0,
                              learn_seconds=0.0, known_classes=None, replay_fill=None)
                return record
            raise LiveEvaluationError(f'~/learn failed at batch {marker["batch"]}: {body}')
        kept = int(body.get('frames', 0))
        lost = max(0, expected - kept)
        totals['lost'] += lost
        totals['train'] += seconds
        if lost:
            print(f'warning: batch {marker["batch"]}: the node learned {kept} of {expected} '
                  f'frames', file=sys.stderr)
        record.update(learned=True, kept=kept, dropped=lost,
                      new_classes=body.get('new_classes', []),
                      known_classes=body.get('known_classes'),
                      replay_fill=body.get('replay_fill'),
                      train_seconds=round(seconds, 4), learn_seconds=body.get('seconds'),
                      loss=body.get('loss'))
        return record

    def _test(self, test_set: Sequence[Tuple[int, bytes, str]],
              totals: Dict[str, Any]) -> float:
        hits = 0
        for stamp_ns, raw, label in test_set:
            predicted = self._predict_frame(stamp_ns, raw, totals)
            hits += predicted == label
        return 100.0 * hits / len(test_set)

    def _predict_frame(self, stamp_ns: int, raw: bytes, totals: Dict[str, Any]) -> str:
        expected = stamp_ns / 1e9
        for attempt in range(MAX_SENDS):
            if attempt:
                totals['resent'] += 1
            self.image_pub.publish(raw)
            sent = time.monotonic()
            time.sleep(0.001)
            while time.monotonic() - sent < RESEND_AFTER_S:
                ok, body = self.call('predict', 60.0)
                if ok and abs(float(body.get('stamp', -1.0)) - expected) < STAMP_TOLERANCE_S:
                    return str(body.get('label', ''))
                if not ok and body.get('error') not in ('no_frame',):
                    raise LiveEvaluationError(f'~/predict failed: {body}')
                time.sleep(0.003)
        raise LiveEvaluationError(f'the node never answered about the test frame stamped '
                                  f'{expected:.3f} s after {MAX_SENDS} sends')


class _Sync:
    """Keep the node's view in step with the playback, through its /diagnostics status.

    Images (best effort) and labels (reliable) travel on different topics, and a busy node
    may handle a queued image after a label that was sent later, or answer ``~/learn`` before
    it has handled the batch's last images. So, when the node publishes its status: after a
    label is sent, playback waits until the status shows that label; before ``~/learn`` it
    waits until the node's ``frames_received``/``frames_collected`` counters have reached
    what was sent; and it sends an image only while fewer than ``window`` sent images are
    not yet handled (the node's image queue holds 5, a node that falls further behind drops
    frames). A wait that times out (a frame really lost) is counted and playback goes on
    from the node's actual counts. Without a status, playback relies on the bag's pacing
    and the frame count in ``~/learn``'s answer.
    """

    def __init__(self, player: 'LivePlayer', timeout: float, window: int) -> None:
        self.player = player
        self.timeout = timeout
        self.window = window
        self.timeouts = 0
        values = player.diagnostics()
        self.enabled = bool(values) and 'frames_received' in values
        self.received = int(values.get('frames_received', 0)) if self.enabled else 0
        self.collected = int(values.get('frames_collected', 0)) if self.enabled else 0
        self.label_set = bool(values.get('label')) if self.enabled else False

    def before_image(self) -> bool:
        """Hold the next image while ``window`` images are not yet handled by the node.

        The node's image subscription keeps 5 messages (sensor-data QoS); a node that falls
        behind by more loses frames. Returns whether it had to wait.
        """
        if not self.enabled or self.window <= 0:
            return False
        need = self.received - self.window + 1
        values = self.player.diagnostics()
        if int(values.get('frames_received', 0)) >= need:
            return False
        found = self.player._status_where(lambda v: int(v.get('frames_received', 0)) >= need,
                                          self.timeout)
        if found is None:
            self._lost('images')
        return True

    def _lost(self, where: str) -> None:
        self.timeouts += 1
        found = self.player.diagnostics()
        print(f'warning: waiting for {where}: the node received '
              f'{found.get("frames_received")} of {self.received} frames sent, collected '
              f'{found.get("frames_collected")} of {self.collected}', file=sys.stderr)
        self.received = int(found.get('frames_received', self.received))
        self.collected = int(found.get('frames_collected', self.collected))

    def sent_image(self) -> None:
        """Count an image sent while playing the training stream."""
        self.received += 1
        self.collected += int(self.label_set)

    def label(self, text: str) -> bool:
        """Wait until the node shows label ``text``; return whether it waited."""
        name = text.strip()
        self.label_set = bool(name)
        if not self.enabled:
            return False
        sent = time.monotonic()
        found = self.player._status_where(lambda v: v.get('label', '') == name, self.timeout,
                                          since=sent)
        if found is None:
            self.timeouts += 1
            print(f'warning: the node did not show label {name!r} within {self.timeout:.0f} s',
                  file=sys.stderr)
        return True

    def before_learn(self) -> None:
        """Wait until the node has handled every image sent so far."""
        if not self.enabled:
            time.sleep(0.1)
            return
        found = self.player._status_where(
            lambda v: int(v.get('frames_received', 0)) >= self.received
            and int(v.get('frames_collected', 0)) >= self.collected, self.timeout)
        if found is None:
            self._lost('~/learn')

    def after_test(self, frames: int, resent: int) -> None:
        """Account for the test frames (each confirmed by ~/predict)."""
        if not self.enabled:
            return
        if resent == 0:
            self.received += frames
            return
        # some test frames were sent twice: read the count back once it is current
        found = self.player._status_where(lambda v: True, self.timeout, since=time.monotonic())
        if found is not None:
            self.received = int(found.get('frames_received', self.received))


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Return the command-line options of ``latent-replay-play-bag``."""
    parser = argparse.ArgumentParser(
        prog='latent-replay-play-bag',
        description='Play an evaluation bag (latent-replay-write-bag) into latent_replay_node '
                    'over ROS 2, paced by the bag timestamps: ~/learn at every batch end, '
                    'test frames + ~/predict at every evaluation point. Writes '
                    'OUT/results.json and OUT/accuracy.png like latent-replay-eval.')
    parser.add_argument('--bag', required=True, metavar='PATH', help='evaluation bag')
    parser.add_argument('--test-bag', metavar='PATH',
                        help='bag with the test frames, when they are not in --bag')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    node = parser.add_argument_group('the node')
    node.add_argument('--node', default=DEFAULT_NODE,
                      help=f'fully qualified name of the running node (default {DEFAULT_NODE})')
    node.add_argument('--start-node', action='store_true',
                      help='start the node in its own process (temporary state, no autosave) '
                           'and stop it at the end')
    node.add_argument('--reset', action='store_true',
                      help='reset a running node that already learned something')
    node.add_argument('--config', metavar='YAML',
                      help="with --start-node: the node's params file or a mapping of learner "
                           'settings (default: the product defaults)')
    node.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='with --start-node: override a learner setting')
    node.add_argument('--seed', type=int, help='with --start-node: random seed')
    node.add_argument('--image-topic', default=fmt.IMAGE_TOPIC,
                      help=f'topic the images are played on (default {fmt.IMAGE_TOPIC})')
    node.add_argument('--label-topic', default=fmt.LABEL_TOPIC,
                      help=f'topic the labels are played on (default {fmt.LABEL_TOPIC})')
    play = parser.add_argument_group('playback and protocol')
    play.add_argument('--rate', type=float, default=1.0,
                      help='playback speed factor of the bag timeline (default 1.0)')
    play.add_argument('--eval-every', type=int, default=1, metavar='K',
                      help='test after every K-th batch and after the last (default 1)')
    play.add_argument('--max-batches', type=int, metavar='N', help='only the first N batches')
    play.add_argument('--test-stride', type=int, default=1, metavar='K',
                      help='every K-th test frame only (default 1)')
    play.add_argument('--window', type=int, default=WINDOW, metavar='N',
                      help='send an image only while fewer than N sent images are not yet '
                           f'handled by the node, per its /diagnostics (default {WINDOW}; '
                           '0: pace by the bag only)')
    play.add_argument('--learn-timeout', type=float, default=LEARN_TIMEOUT_S,
                      metavar='SECONDS', help='longest a ~/learn call may take')
    play.add_argument('--compare-offline', action='store_true',
                      help='afterwards, evaluate the same bag offline with the same '
                           'configuration and report the difference')
    parser.add_argument('--title', default='', help='plot title')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Play, evaluate and write the results as the arguments say."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_every < 1:
        raise LatentReplayError('--eval-every must be >= 1')
    process: Optional[NodeProcess] = None
    started_config: Optional[LearnerConfig] = None
    if args.start_node:
        overrides = dict(parse_override(item) for item in args.set)
        if args.seed is not None:
            overrides['seed'] = args.seed
        started_config, ignored = load_config(args.config, overrides)
        if ignored:
            print(f'note: not learner settings, ignored: {", ".join(ignored)}',
                  file=sys.stderr)
        process = NodeProcess(started_config, out / 'node', node_name=args.node,
                              image_topic=args.image_topic, label_topic=args.label_topic)
    elif args.config or args.set or args.seed is not None:
        raise LatentReplayError('--config/--set/--seed configure a node started with '
                                '--start-node; a running node has its own parameters')
    player = None
    try:
        player = LivePlayer(args.node, args.image_topic, args.label_topic,
                            alive=process.check_alive if process else None)
        player.wait_ready()
        player.ensure_fresh(args.reset)
        live = player.evaluate_bag(args.bag, test_bag=args.test_bag,
                                   eval_every=args.eval_every, rate=args.rate,
                                   max_batches=args.max_batches, test_stride=args.test_stride,
                                   learn_timeout=args.learn_timeout,
                                   progress=not args.no_progress, window=args.window)
    finally:
        if player is not None:
            player.close()
        if process is not None:
            code = process.stop()
            if code not in (0, None, -signal.SIGINT):
                print(f'warning: the node exited with code {code} (log: {process.log_path})',
                      file=sys.stderr)
    runs = [live]
    extra: Dict[str, Any] = {'command': sys.argv, 'live': live['live']}
    if args.compare_offline:
        if started_config is None and not live['config']:
            raise LiveEvaluationError('could not read the node\'s parameters; cannot compare '
                                      'with an offline run of the same configuration')
        config = started_config or LearnerConfig.from_dict(live['config'])
        source = BagSource(args.bag, test_bag=args.test_bag, max_batches=args.max_batches,
                           test_stride=args.test_stride)
        offline = evaluate(source, config, name='offline', eval_every=args.eval_every,
                           progress=not args.no_progress)
        runs.append(offline)
        extra['offline_final_accuracy'] = offline['final_accuracy']
        extra['difference_pp'] = round(live['final_accuracy'] - offline['final_accuracy'], 4)
    document = results_document(runs, extra)
    write_results(out / 'results.json', document)
    plot_results(runs, out / 'accuracy.png', title=args.title)
    return document


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        document = run(args)
    except (LatentReplayError, fmt.BagFormatError, ValueError, OSError) as exc:
        print(f'latent-replay-play-bag: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('latent-replay-play-bag: interrupted', file=sys.stderr)
        return 130
    live = document['runs'][0]
    line = (f'live final accuracy {live["final_accuracy"]:.2f}% (mean '
            f'{live["mean_accuracy"]:.2f}%), {live["live"]["frames_lost"]} frames lost, '
            f'{live["wall_seconds"]:.0f} s')
    if 'offline_final_accuracy' in document:
        line += (f'; offline {document["offline_final_accuracy"]:.2f}% '
                 f'(difference {document["difference_pp"]:+.2f} points)')
    print(line)
    print(f'-> {Path(args.out) / "results.json"}, {Path(args.out) / "accuracy.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
