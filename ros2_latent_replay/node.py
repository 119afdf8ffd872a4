"""latent_replay_node: teach a robot new objects over ROS 2 topics and services.

Subscribes ``image`` (sensor_msgs/Image, sensor-data QoS) and ``label`` (std_msgs/String,
reliable); frames that arrive while a label is set are collected, latents computed on arrival
by a small worker thread, into the current episode. ``~/learn`` turns the episode into one
continual-learning step on a second worker thread, so images, ``~/predict`` and
``~/prediction`` keep flowing; ``~/save`` and ``~/reset`` manage the state file. Status goes
to ``/diagnostics``. All services are std_srvs/Trigger and answer with JSON.
"""

import json
import math
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from .callback_executor import CallbackPoolExecutor
from .core import checkpoint
from .core.class_registry import normalize_label
from .core.errors import (BusyError, CheckpointError, ClassLimitError, EmptyEpisodeError,
                          InputError, LatentReplayError, NonFiniteError, NotTrainedError)
from .core.learner import ContinualLearner
from .image_conversion import MalformedImageError, UnsupportedEncodingError, \
    image_fields_to_rgb
from .parameters import NODE_NAME, declare_all, learner_config_from_parameters, \
    resolve_state_path

#: seconds between repeated warnings of one kind (bad encodings, dropped batches, ...)
WARN_THROTTLE_S = 5.0
#: batches of frames waiting for their latents before new ones are dropped
OBSERVE_QUEUE_BATCHES = 32
#: bytes of frames waiting for their latents (the batch being filled included) before new
#: ones are dropped: bounds memory whatever the camera resolution and observe_batch_size
OBSERVE_QUEUE_BYTES = 128 * 2**20
#: a batch being filled is handed to the latent worker once it holds this many bytes
OBSERVE_BATCH_BYTES = 16 * 2**20
#: requests each service keeps until they are handled (rclpy's default, 10, silently drops
#: the rest of a burst, and a client waiting for a dropped request waits forever)
SERVICE_QUEUE_DEPTH = 1000
#: seconds ~/learn waits for frames already received to get their latents
OBSERVE_DRAIN_TIMEOUT_S = 120.0
#: seconds a shutdown waits for a running learning step
SHUTDOWN_WAIT_S = 10.0
#: smallest frame side the learner accepts
MIN_FRAME_SIDE = 8
#: executor worker threads: one per callback group (frames, jobs, queries, status)
CALLBACK_THREADS = 4
#: seconds the prediction worker sleeps at most before it looks at shutdown again
PREDICTION_IDLE_WAIT_S = 0.5


def _json(payload: Dict[str, Any]) -> str:
    """Compact JSON, NaN-free."""
    return json.dumps(payload, separators=(',', ':'), sort_keys=False, allow_nan=False)


def _error(kind: str, detail: str, **extra: Any) -> str:
    """JSON body of a failed service call."""
    return _json({'error': kind, 'detail': detail, **extra})


def _stamp_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time as float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def _finite(value: Any) -> Any:
    """Replace non-finite floats (which JSON cannot carry) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _Frame:
    """The newest received frame: RGB pixels, header stamp, receive time, sequence number."""

    __slots__ = ('rgb', 'stamp', 'received', 'seq')

    def __init__(self, rgb: np.ndarray, stamp: float, received: float, seq: int) -> None:
        self.rgb, self.stamp, self.received, self.seq = rgb, stamp, received, seq


class LatentReplayNode(Node):
    """ROS 2 front end of :class:`~ros2_latent_replay.core.learner.ContinualLearner`."""

    def __init__(self, node_name: str = NODE_NAME, **node_kwargs: Any) -> None:
        """Declare parameters, build the learner, load the state file, wire up ROS I/O.

        ``node_kwargs`` go to :class:`rclpy.node.Node` (``context``, ``namespace``,
        ``parameter_overrides``, ``cli_args``, ...). Raises
        :class:`~ros2_latent_replay.core.errors.ConfigError` for bad learner settings and
        :class:`~ros2_latent_replay.core.errors.CheckpointError` for a state file that cannot
        be loaded when ``start_fresh_on_bad_state`` is false.
        """
        self._closed = True     # nothing to shut down until the workers run
        super().__init__(node_name, **node_kwargs)
        values = declare_all(self)
        self._config = learner_config_from_parameters(values)
        self._state_path = resolve_state_path(values['state_file'])
        self._autosave = bool(values['autosave'])
        self._top_k = int(values['top_k'])
        self._observe_batch_size = int(values['observe_batch_size'])
        self._prediction_rate = float(values['prediction_rate'])

        started = time.monotonic()
        self._learner = ContinualLearner(self._config)
        try:
            self._state_status = self._load_state(bool(values['start_fresh_on_bad_state']))
        except BaseException:
            self._learner.close()
            raise
        self.get_logger().info(
            f'learner ready in {time.monotonic() - started:.1f} s: {self._config.backbone} cut '
            f'after {self._config.latent_layer}, strategy {self._config.strategy}, replay '
            f'{self._learner.replay_capacity} patterns ({self._config.replay_storage}); '
            f'state file {self._state_path} ({self._state_status})')

        # frames, label and the episode batch being filled
        self._frame_lock = threading.Lock()
        self._newest: Optional[_Frame] = None
        self._frame_seq = 0
        self._label: Optional[str] = None
        self._batch: List[np.ndarray] = []
        self._batch_label: Optional[str] = None
        self._batch_bytes = 0       # bytes of the batch being filled
        self._pending_bytes = 0     # that batch plus batches queued for or in the worker
        self._counters = {'frames_received': 0, 'frames_rejected': 0, 'frames_collected': 0,
                          'frames_dropped': 0, 'observe_errors': 0, 'callback_errors': 0,
                          'pending_bytes_peak': 0}
        self._last_observe_error = ''

        # workers: one computes latents of collected frames, one runs learn/save/reset
        self._observe_queue: 'queue.Queue[Any]' = queue.Queue(maxsize=OBSERVE_QUEUE_BATCHES)
        self._observe_thread = threading.Thread(target=self._observe_loop,
                                                name='latent_replay_observe', daemon=True)
        self._observe_thread.start()
        self._jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix='latent_replay_learn')
        self._job_lock = threading.Lock()
        self._job_name = ''
        self._job_started = 0.0
        self._last_learn: Dict[str, Any] = {}
        self._last_learn_error = ''
        self._closed = False
        self._prediction_wake = threading.Event()   # set by every new frame

        # ROS interfaces, in separate callback groups
        self._frames_group = MutuallyExclusiveCallbackGroup()
        self._jobs_group = ReentrantCallbackGroup()
        self._query_group = MutuallyExclusiveCallbackGroup()
        self._status_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, 'image', self._on_image, qos_profile_sensor_data,
                                 callback_group=self._frames_group)
        self.create_subscription(String, 'label', self._on_label,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
                                 callback_group=self._frames_group)
        services = QoSProfile(depth=SERVICE_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self.create_service(Trigger, '~/learn', self._on_learn, qos_profile=services,
                            callback_group=self._jobs_group)
        self.create_service(Trigger, '~/save', self._on_save, qos_profile=services,
                            callback_group=self._jobs_group)
        self.create_service(Trigger, '~/reset', self._on_reset, qos_profile=services,
                            callback_group=self._jobs_group)
        self.create_service(Trigger, '~/predict', self._on_predict, qos_profile=services,
                            callback_group=self._query_group)
        self._prediction_pub = self.create_publisher(String, '~/prediction', 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._last_published_seq = 0
        self._prediction_thread = threading.Thread(target=self._prediction_loop,
                                                   name='latent_replay_predict', daemon=True)
        self._prediction_thread.start()
        self._diagnostics_timer = self.create_timer(
            float(values['diagnostics_period']), self._on_diagnostics,
            callback_group=self._status_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ state file
    def _load_state(self, start_fresh: bool) -> str:
        """Load the state file if there is one; return a word on what happened.

        Temporary files that a save cut off by a crash left next to the state file are
        removed first (the state file itself is always complete: saves are atomic).
        """
        path = self._state_path
        removed = checkpoint.remove_stale_temporaries(str(path))
        if removed:
            self.get_logger().warning(f'removed {removed} temporary file(s) of a save that was '
                                      f'cut off next to {path}')
        if not path.exists():
            return 'none yet; starting from the pretrained network'
        try:
            self._learner.load(str(path))
        except CheckpointError as exc:
            if not start_fresh:
                raise CheckpointError(
                    f'cannot load the state file {path}: {exc}. Move or delete it, point '
                    f'state_file elsewhere, or set start_fresh_on_bad_state:=true to set it '
                    f'aside and start from the pretrained network') from exc
            aside = path.with_name(f'{path.name}.broken-{time.strftime("%Y%m%d-%H%M%S")}')
            os.replace(path, aside)
            self.get_logger().error(f'state file {path} could not be loaded ({exc}); moved it '
                                    f'to {aside} and starting from the pretrained network')
            return f'broken, moved to {aside.name}'
        classes = self._learner.known_classes
        return f'loaded: {len(classes)} classes, {self._learner.steps} steps'

    def _save_state(self, path: Optional[Path] = None) -> Path:
        """Write the learner state atomically (creating the directory)."""
        path = path or self._state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._learner.save(str(path))
        return path

    # ------------------------------------------------------------------ properties
    @property
    def learner(self) -> ContinualLearner:
        """The learner behind the node."""
        return self._learner

    @property
    def state_path(self) -> Path:
        """Where the state is saved."""
        return self._state_path

    @property
    def current_label(self) -> Optional[str]:
        """The teaching label in force (None when not collecting)."""
        return self._label

    @property
    def newest_frame(self) -> Optional[np.ndarray]:
        """RGB pixels of the newest frame received, None before the first."""
        frame = self._newest
        return None if frame is None else frame.rgb

    @property
    def newest_stamp(self) -> Optional[float]:
        """Header stamp (seconds) of the newest frame received, None before the first."""
        frame = self._newest
        return None if frame is None else frame.stamp

    def counters(self) -> Dict[str, int]:
        """Return the frame counters: received, rejected, collected, dropped, observe errors."""
        with self._frame_lock:
            return dict(self._counters)

    def pending_frames(self) -> int:
        """Frames collected but not yet in the learner's episode."""
        with self._frame_lock:
            waiting = len(self._batch)
        return waiting + self._queued_frames()

    def _queued_frames(self) -> int:
        with self._observe_queue.mutex:
            return sum(len(item[1]) for item in self._observe_queue.queue
                       if item is not None and item[0] == 'frames')

    def _callback_failed(self, what: str, exc: BaseException) -> None:
        """Count and log an unexpected exception of a callback instead of letting it escape.

        An exception escaping a callback would stop the executor, i.e. the whole node.
        """
        with self._frame_lock:
            self._counters['callback_errors'] += 1
        self.get_logger().error(f'{what} failed: {type(exc).__name__}: {exc}',
                                throttle_duration_sec=WARN_THROTTLE_S)

    # ------------------------------------------------------------------ frames and label
    def _on_image(self, msg: Image) -> None:
        """Keep the newest frame; collect it into the episode while a label is set."""
        try:
            self._take_image(msg)
        except Exception as exc:  # noqa: B902 - a bad message must not stop the node
            self._callback_failed('handling an image', exc)

    def _take_image(self, msg: Image) -> None:
        try:
            rgb = image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                      msg.is_bigendian, msg.data)
        except (UnsupportedEncodingError, MalformedImageError) as exc:
            with self._frame_lock:
                self._counters['frames_rejected'] += 1
            self.get_logger().warning(f'dropping image: {exc}',
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
        if min(rgb.shape[0], rgb.shape[1]) < MIN_FRAME_SIDE:
            with self._frame_lock:
                self._counters['frames_rejected'] += 1
            self.get_logger().warning(
                f'dropping image: {rgb.shape[1]}x{rgb.shape[0]} is smaller than '
                f'{MIN_FRAME_SIDE}x{MIN_FRAME_SIDE}', throttle_duration_sec=WARN_THROTTLE_S)
            return
        full = None
        over_budget = False
        with self._frame_lock:
            self._frame_seq += 1
            self._counters['frames_received'] += 1
            self._newest = _Frame(rgb, _stamp_seconds(msg.header.stamp), time.time(),
                                  self._frame_seq)
            if self._label is not None:
                self._counters['frames_collected'] += 1
                if self._pending_bytes + rgb.nbytes > OBSERVE_QUEUE_BYTES:
                    self._counters['frames_dropped'] += 1
                    over_budget = True
                else:
                    self._batch.append(rgb)
                    self._batch_bytes += rgb.nbytes
                    self._pending_bytes += rgb.nbytes
                    self._counters['pending_bytes_peak'] = max(
                        self._counters['pending_bytes_peak'], self._pending_bytes)
                    self._batch_label = self._label
                    if len(self._batch) >= self._observe_batch_size \
                            or self._batch_bytes >= OBSERVE_BATCH_BYTES:
                        full = self._take_batch_locked()
        self._prediction_wake.set()
        if over_budget:
            self.get_logger().warning(
                f'dropping frames: {OBSERVE_QUEUE_BYTES // 2**20} MB of frames already wait '
                f'for their latents (the camera is faster than the latent computation)',
                throttle_duration_sec=WARN_THROTTLE_S)
        if full is not None:
            self._enqueue_batch(full)

    def _on_label(self, msg: String) -> None:
        """Set the teaching label; an empty string stops collecting."""
        try:
            self._take_label(msg)
        except Exception as exc:  # noqa: B902 - a bad message must not stop the node
            self._callback_failed('handling a label', exc)

    def _take_label(self, msg: String) -> None:
        text = msg.data
        if not text.strip():
            name = None
        else:
            try:
                name = normalize_label(text, self._config.max_label_length)
            except InputError as exc:
                self.get_logger().warning(f'ignoring label {text[:40]!r}: {exc}; frames are '
                                          f'not collected until a valid label arrives')
                name = None
        with self._frame_lock:
            if name == self._label:
                return
            pending = self._take_batch_locked()
            previous, self._label = self._label, name
        if pending is not None:
            self._enqueue_batch(pending)
        if name is None:
            if previous is not None:
                self.get_logger().info(f'stopped collecting (was {previous!r})')
        else:
            self.get_logger().info(f'collecting frames of {name!r}')

    def _take_batch_locked(self) -> Optional[Tuple[str, List[np.ndarray], str, int]]:
        """Detach the batch being filled (caller holds the frame lock)."""
        if not self._batch:
            return None
        batch = ('frames', self._batch, self._batch_label, self._batch_bytes)
        self._batch, self._batch_label, self._batch_bytes = [], None, 0
        return batch

    def _discard_batch_locked(self) -> None:
        """Forget the batch being filled (caller holds the frame lock)."""
        self._pending_bytes -= self._batch_bytes
        self._batch, self._batch_label, self._batch_bytes = [], None, 0

    def _flush_batch(self) -> None:
        """Send the partly filled batch to the latent worker now."""
        with self._frame_lock:
            pending = self._take_batch_locked()
        if pending is not None:
            self._enqueue_batch(pending)

    def _enqueue_batch(self, batch: Tuple[str, List[np.ndarray], str, int]) -> None:
        """Queue frames for the latent worker, dropping them if it is far behind."""
        try:
            self._observe_queue.put_nowait(batch)
        except queue.Full:
            with self._frame_lock:
                self._counters['frames_dropped'] += len(batch[1])
                self._pending_bytes -= batch[3]
            self.get_logger().warning(
                f'dropping {len(batch[1])} frames of {batch[2]!r}: latent computation is '
                f'behind the camera (lower the frame rate or observe_batch_size)',
                throttle_duration_sec=WARN_THROTTLE_S)

    def _observe_loop(self) -> None:
        """Worker: compute latents of queued frames into the learner's episode."""
        while True:
            item = self._observe_queue.get()
            try:
                if item is None:
                    return
                if item[0] == 'barrier':
                    item[1].set()
                    continue
                _, frames, label, _ = item
                try:
                    accepted = self._learner.observe(frames, label)
                except (InputError, ClassLimitError) as exc:
                    with self._frame_lock:
                        self._counters['observe_errors'] += len(frames)
                    self._last_observe_error = str(exc)
                    self.get_logger().warning(
                        f'{len(frames)} frames of {label!r} not collected: {exc}',
                        throttle_duration_sec=WARN_THROTTLE_S)
                    continue
                except Exception as exc:  # noqa: B902 - keep the worker alive
                    with self._frame_lock:
                        self._counters['observe_errors'] += len(frames)
                    self._last_observe_error = f'{type(exc).__name__}: {exc}'
                    self.get_logger().error(f'computing latents failed: {exc!r}',
                                            throttle_duration_sec=WARN_THROTTLE_S)
                    continue
                if accepted < len(frames):
                    self.get_logger().warning(
                        f'episode full (max_frames_per_episode='
                        f'{self._config.max_frames_per_episode}): {len(frames) - accepted} '
                        f'frames dropped; call ~/learn', throttle_duration_sec=WARN_THROTTLE_S)
            finally:
                if item is not None and item[0] == 'frames':
                    with self._frame_lock:
                        self._pending_bytes -= item[3]
                self._observe_queue.task_done()

    def wait_for_observed(self, timeout: float = OBSERVE_DRAIN_TIMEOUT_S) -> bool:
        """Flush the batch being filled and wait until every queued frame is in the episode."""
        self._flush_batch()
        barrier = threading.Event()
        try:
            self._observe_queue.put(('barrier', barrier), timeout=timeout)
        except queue.Full:
            return False
        return barrier.wait(timeout)

    # ------------------------------------------------------------------ learn / save / reset
    def _run_job(self, name: str, job: Any, response: Any) -> Any:
        """Run ``job`` on the learning worker; answer busy at once if one is running."""
        if self._closed:
            response.success = False
            response.message = _error('shutting_down', 'the node is shutting down')
            return response
        if not self._job_lock.acquire(blocking=False):
            running = time.monotonic() - self._job_started
            response.success = False
            response.message = _error(
                'busy', f'busy: {self._job_name} is running (for {running:.1f} s); '
                        f'try again when it ends', running=self._job_name)
            return response
        try:
            self._job_name, self._job_started = name, time.monotonic()
            future = self._jobs.submit(job)
            success, message = future.result()
        except Exception as exc:  # noqa: B902 - a service must always answer
            success, message = False, _error('internal', f'{type(exc).__name__}: {exc}')
        finally:
            self._job_name = ''
            self._job_lock.release()
        response.success, response.message = success, message
        return response

    def _on_learn(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        """~/learn: one continual-learning step on the collected episode."""
        return self._run_job('learn', self._learn_job, response)

    def _learn_job(self) -> Tuple[bool, str]:
        if not self.wait_for_observed():
            return False, _error('internal', 'timed out waiting for latents of collected frames')
        try:
            summary = self._learner.learn()
        except EmptyEpisodeError as exc:
            self._last_learn_error = str(exc)
            return False, _error('empty_episode', str(exc))
        except BusyError as exc:
            return False, _error('busy', f'busy: {exc}')
        except NonFiniteError as exc:
            self._last_learn_error = str(exc)
            return False, _error('non_finite', str(exc))
        except LatentReplayError as exc:
            self._last_learn_error = str(exc)
            return False, _error(type(exc).__name__, str(exc))
        summary = _finite(dict(summary))
        if self._autosave:
            try:
                summary['saved'] = str(self._save_state())
            except (OSError, LatentReplayError) as exc:
                summary['save_error'] = str(exc)
                self.get_logger().error(f'saving the state to {self._state_path} failed: {exc}')
        self._last_learn = summary
        self._last_learn_error = ''
        self.get_logger().info(
            f'learned step {summary.get("step")}: {summary.get("frames")} frames of '
            f'{summary.get("new_classes")} new / {len(summary.get("classes") or [])} known '
            f'classes in {summary.get("seconds", 0.0):.2f} s')
        return True, _json(summary)

    def _on_save(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        """~/save: write the state file now."""
        return self._run_job('save', self._save_job, response)

    def _save_job(self) -> Tuple[bool, str]:
        try:
            path = self._save_state()
        except (OSError, LatentReplayError) as exc:
            return False, _error('save_failed', f'could not write {self._state_path}: {exc}')
        return True, _json({'saved': str(path), 'classes': self._learner.known_classes,
                            'steps': self._learner.steps})

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        """~/reset: save a backup, then forget everything learned."""
        return self._run_job('reset', self._reset_job, response)

    def _reset_job(self) -> Tuple[bool, str]:
        backup = self._state_path.with_name(
            f'{self._state_path.stem}.before-reset-{time.strftime("%Y%m%d-%H%M%S")}'
            f'{self._state_path.suffix}')
        forgotten = self._learner.known_classes
        try:
            self._save_state(backup)
        except (OSError, LatentReplayError) as exc:
            return False, _error('backup_failed',
                                 f'not reset: could not write the backup {backup}: {exc}')
        with self._frame_lock:
            self._discard_batch_locked()
        self.wait_for_observed()
        try:
            self._learner.reset()
        except BusyError as exc:
            return False, _error('busy', f'busy: {exc}')
        result = {'reset': True, 'backup': str(backup), 'forgotten_classes': forgotten}
        if self._autosave:
            try:
                result['saved'] = str(self._save_state())
            except (OSError, LatentReplayError) as exc:
                result['save_error'] = str(exc)
        self._last_learn = {}
        self.get_logger().info(f'reset: forgot {len(forgotten)} classes (backup {backup})')
        return True, _json(result)

    # ------------------------------------------------------------------ predictions
    def _predict_newest(self) -> Tuple[Optional[_Frame], Dict[str, Any]]:
        """Classify the newest frame; raise NotTrainedError / InputError like the learner."""
        with self._frame_lock:
            frame = self._newest
        if frame is None:
            return None, {}
        started = time.perf_counter()
        result = self._learner.predict([frame.rgb], top_k=self._top_k)[0]
        latency = time.perf_counter() - started
        payload = {'label': result['label'], 'confidence': result['confidence'],
                   'top_k': result['top_k'], 'stamp': frame.stamp,
                   'latency_ms': round(latency * 1000.0, 3),
                   'frame_age_ms': round((time.time() - frame.received) * 1000.0, 3)}
        return frame, _finite(payload)

    def _on_predict(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        """~/predict: classify the newest frame."""
        try:
            frame, payload = self._predict_newest()
        except NotTrainedError as exc:
            response.success, response.message = False, _error('not_trained', str(exc))
            return response
        except InputError as exc:
            response.success, response.message = False, _error('bad_frame', str(exc))
            return response
        except Exception as exc:  # noqa: B902 - a service must always answer
            self._callback_failed('~/predict', exc)
            response.success = False
            response.message = _error('internal', f'{type(exc).__name__}: {exc}')
            return response
        if frame is None:
            response.success = False
            response.message = _error('no_frame', 'no image received yet on '
                                      f'{self.resolve_topic_name("image")}')
            return response
        response.success, response.message = True, _json(payload)
        return response

    def _prediction_loop(self) -> None:
        """Worker: publish ~/prediction for new frames, at most ``prediction_rate`` a second.

        A frame is classified as soon as it arrives, unless the last prediction is less than
        1/``prediction_rate`` s old; then the newest frame is classified once that time has
        passed. Predictions follow the camera without waiting for a timer tick, and a camera
        slower than the rate gets every frame classified.
        """
        last = -math.inf
        while not self._closed:
            if not self._prediction_wake.wait(PREDICTION_IDLE_WAIT_S):
                continue
            self._prediction_wake.clear()   # before looking: a frame after this sets it again
            while not self._closed:
                rate = self._prediction_rate
                with self._frame_lock:
                    frame = self._newest
                if rate <= 0.0 or frame is None or frame.seq == self._last_published_seq:
                    break
                wait = last + 1.0 / rate - time.monotonic()
                if wait > 0.0:      # then look at closed, rate and the newest frame again
                    time.sleep(min(wait, PREDICTION_IDLE_WAIT_S))
                    continue
                last = time.monotonic()
                try:
                    self._publish_prediction()
                except Exception as exc:  # noqa: B902 - the worker must keep running
                    if not self._closed and self.context.ok():
                        self._callback_failed('publishing ~/prediction', exc)
                break

    def _publish_prediction(self) -> None:
        """Classify the newest frame and publish it (the worker checked that it is new)."""
        try:
            frame, payload = self._predict_newest()
        except (NotTrainedError, InputError):
            return
        if frame is None:
            return
        self._last_published_seq = frame.seq
        self._prediction_pub.publish(String(data=_json(payload)))

    def _set_prediction_rate(self, rate: float) -> None:
        self._prediction_rate = rate
        self._prediction_wake.set()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, parameters: List[Any]) -> SetParametersResult:
        """Apply run-time changes (read-only ones and ranges are enforced by rclpy)."""
        for parameter in parameters:
            if parameter.name == 'prediction_rate':
                self._set_prediction_rate(float(parameter.value))
            elif parameter.name == 'top_k':
                self._top_k = int(parameter.value)
            elif parameter.name == 'observe_batch_size':
                self._observe_batch_size = int(parameter.value)
            elif parameter.name == 'autosave':
                self._autosave = bool(parameter.value)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ diagnostics
    def status(self) -> Dict[str, Any]:
        """Everything /diagnostics reports, as a dict."""
        learner = self._learner
        counters = self.counters()
        return {
            'known_classes': learner.known_classes,
            'steps': learner.steps,
            'replay_fill': learner.replay_fill,
            'replay_capacity': learner.replay_capacity,
            'episode_frames': learner.episode_size,
            'episode_dropped': learner.episode_dropped + counters['frames_dropped'],
            'episode_labels': learner.episode_labels,
            'pending_frames': self.pending_frames(),
            'pending_bytes': self._pending_bytes,
            'label': self._label or '',
            'learning': self._job_name == 'learn',
            'last_learn_seconds': self._last_learn.get('seconds', 0.0),
            'last_learn_error': self._last_learn_error,
            'last_observe_error': self._last_observe_error,
            'state_file': str(self._state_path),
            **counters,
        }

    def _on_diagnostics(self) -> None:
        try:
            self._publish_diagnostics()
        except Exception as exc:  # noqa: B902 - a timer must not stop the node
            self._callback_failed('publishing /diagnostics', exc)

    def _publish_diagnostics(self) -> None:
        status = self.status()
        level = DiagnosticStatus.OK
        message = (f'{len(status["known_classes"])} classes, replay '
                   f'{status["replay_fill"]}/{status["replay_capacity"]}')
        if status['learning']:
            message += ', learning'
        if status['last_learn_error']:
            level, message = DiagnosticStatus.WARN, f'last learn failed: ' \
                                                     f'{status["last_learn_error"]}'
        values = []
        for key, value in status.items():
            text = ', '.join(value) if isinstance(value, list) else \
                (f'{value:.3f}' if isinstance(value, float) else str(value))
            values.append(KeyValue(key=key, value=text))
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [DiagnosticStatus(level=level, name=f'{self.get_name()}: learner',
                                         message=message,
                                         hardware_id=self.get_fully_qualified_name(),
                                         values=values)]
        self._diagnostics_pub.publish(array)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, timeout: float = SHUTDOWN_WAIT_S) -> bool:
        """Stop the workers and release the shared memory; False if a learn step was cut off.

        Safe to call more than once. A learning step that does not end within ``timeout``
        seconds is abandoned: its shared-memory segment is unlinked (the mapping stays valid
        until the process exits) and the state file keeps the last completed step.
        """
        if self._closed:
            return True
        self._closed = True
        self._prediction_wake.set()
        try:
            self._observe_queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._observe_thread.join(timeout)
        self._prediction_thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self._job_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.05)
        clean = not self._job_lock.locked()
        self._jobs.shutdown(wait=clean)
        if clean:
            self._learner.close()
        else:
            self.get_logger().warning('a learning step was still running at shutdown; it is '
                                      'abandoned (the state file keeps the last finished step)')
            name = self._learner.replay_shm_name
            if name:
                try:
                    os.unlink(os.path.join('/dev/shm', name))
                except OSError:
                    pass
        return clean

    def destroy_node(self) -> None:
        """Shut the workers down, then destroy the ROS node."""
        self.shutdown()
        super().destroy_node()


def main(args: Optional[List[str]] = None,
         executor_factory: Optional[Callable[[], Executor]] = None) -> int:
    """Console entry point: ``latent-replay-node --ros-args --params-file config/params.yaml``.

    The node spins on a :class:`CallbackPoolExecutor` with one worker per callback group;
    ``executor_factory`` builds another executor instead (benchmarks compare them).
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    clean = True
    try:
        node = LatentReplayNode()
        executor = (executor_factory() if executor_factory is not None
                    else CallbackPoolExecutor(num_threads=CALLBACK_THREADS))
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            # a learn call may still wait for its worker: do not join that thread here
            executor.shutdown(timeout_sec=1.0, wait_for_threads=False)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (LatentReplayError, ParameterException) as exc:
        print(f'[{NODE_NAME}] cannot start: {exc}', file=sys.stderr)
        return 1
    except Exception:  # noqa: B902 - a signal during start-up shuts the context down
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            clean = node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if not clean:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # a learning thread is still running: do not wait for it
    return 0


if __name__ == '__main__':
    sys.exit(main())
