"""Figure 4: node throughput with a 30 fps camera in another process, idle and while learning.

Three processes: the node (``python -m ros2_latent_replay.node`` with config/params.yaml,
``prediction_rate`` 30 Hz, ``threads`` explicit), a camera publisher (this script with
``--camera``: real COIL-100 clutter frames resized to the requested size, rgb8,
sensor-data QoS, stamped with the wall clock at publish time), and this driver (label
publisher, ``~/learn`` client, ``~/prediction`` and ``/diagnostics`` subscriber).

Per image size (128x128 and 640x480), after teaching two objects (3 s of frames each,
one learning step):

* idle: the camera runs ``--seconds``, no label set, no learning;
* learning: a third object is taught for 10 s (300 frames), then the camera runs again
  and ``~/learn`` is called one second in; the window is the learning step.

Reported: frames sent / received by the node / dropped (sent - received, best effort
transport), node's own dropped counter, predictions per second, latency from image stamp
to the driver receiving ``~/prediction`` (p50/p99), the node's RSS (from /proc), the CPU
seconds of each node thread in the window (``main`` spins the executor), of the driver and
of the camera, and the node's ``frames_received`` over time as /diagnostics reported it.

``--executors pool,rclpy`` (the default) measures the node on its own executor
(:class:`ros2_latent_replay.callback_executor.CallbackPoolExecutor`) and on rclpy's
``MultiThreadedExecutor`` with the same 4 threads, in the same run; ``--repeats N``
interleaves N rounds of both.
Environment: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, an own ROS_DOMAIN_ID, a temporary
ROS_LOG_DIR, and the Fast DDS profile config/fastdds_large_images.xml (16 MB SHM segment)
for every process.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (REPO, Recorder, cpu_delta, parse_common, peak_rss_bytes, rss_bytes, summary,
                    thread_cpu_seconds)

PROFILE = REPO / 'config' / 'fastdds_large_images.xml'
NODE = '/latent_replay_node'
#: how the node process is started per executor: the product's own (``pool``) and rclpy's
#: MultiThreadedExecutor with as many threads (``rclpy``), which the node used before
EXECUTORS = {
    'pool': ['-m', 'ros2_latent_replay.node'],
    'rclpy': ['-c', 'import sys; from rclpy.executors import MultiThreadedExecutor as M; '
                    'from ros2_latent_replay import node; '
                    'sys.exit(node.main(executor_factory='
                    'lambda: M(num_threads=node.CALLBACK_THREADS)))'],
}
EXECUTOR_NAMES = {'pool': 'CallbackPoolExecutor',
                  'rclpy': 'rclpy MultiThreadedExecutor'}


def ros_env(domain):
    """Return the environment for every ROS process of this benchmark."""
    env = dict(os.environ)
    env.update({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_DOMAIN_ID': str(domain),
                'ROS_LOG_DIR': tempfile.mkdtemp(prefix='bench_roslog_'),
                'FASTDDS_DEFAULT_PROFILES_FILE': str(PROFILE),
                'FASTRTPS_DEFAULT_PROFILES_FILE': str(PROFILE),
                'PYTHONPATH': str(REPO) + os.pathsep + env.get('PYTHONPATH', '')})
    return env


def camera_main(width, height, fps, seconds, offset):
    """Run the camera process: publish real frames at ``fps`` for ``seconds``; print a count."""
    import rclpy
    from PIL import Image as PILImage
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    sys.path.insert(0, str(REPO / 'benchmarks'))
    from common import load_frames
    frames, _ = load_frames('clutter', 0, count=60, offset=offset)
    data = [np.asarray(PILImage.fromarray(f).resize((width, height))).tobytes() for f in frames]
    rclpy.init()
    node = rclpy.create_node('bench_camera')
    pub = node.create_publisher(Image, 'image', qos_profile_sensor_data)
    deadline = time.monotonic() + 60
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    sent = 0
    cpu_start = time.process_time()
    start = time.monotonic()
    period = 1.0 / fps
    while time.monotonic() - start < seconds and not stop:
        msg = Image()
        now = time.time()
        msg.header.stamp.sec = int(now)
        msg.header.stamp.nanosec = int((now - int(now)) * 1e9)
        msg.header.frame_id = 'camera'
        msg.height, msg.width, msg.encoding, msg.step = height, width, 'rgb8', width * 3
        msg.data = data[sent % len(data)]
        pub.publish(msg)
        sent += 1
        next_at = start + sent * period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu_start
    time.sleep(0.5)
    print('CAMERA' + json.dumps({'sent': sent, 'seconds': elapsed, 'cpu_seconds': cpu}),
          flush=True)
    node.destroy_node()
    rclpy.shutdown()


class Driver:
    """Client side: label, learn, predictions, diagnostics."""

    def __init__(self, env):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        self.String, self.Trigger = String, Trigger
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('bench_driver', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.label_pub = self.node.create_publisher(
            String, 'label', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.learn = self.node.create_client(Trigger, f'{NODE}/learn')
        self.predictions = []
        self.status = {}
        self.received_series = []   # (driver time, node's frames_received) per /diagnostics
        self.node.create_subscription(String, f'{NODE}/prediction', self._on_pred, 100)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    def _on_pred(self, msg):
        payload = json.loads(msg.data)
        self.predictions.append((time.time(), payload))

    def _on_diag(self, msg):
        for item in msg.status:
            if item.hardware_id == NODE:
                self.status = {kv.key: kv.value for kv in item.values}
                self.received_series.append((time.time(), self.counter('frames_received')))

    def spin(self, seconds=None, until=None, timeout=600):
        """Spin for ``seconds`` or until ``until()`` (with a timeout)."""
        end = time.monotonic() + (seconds if seconds is not None else timeout)
        while time.monotonic() < end:
            if until is not None and until():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return until is None

    def label(self, text):
        """Publish a teaching label."""
        self.label_pub.publish(self.String(data=text))

    def call_learn(self):
        """Call ~/learn asynchronously; return the future."""
        return self.learn.call_async(self.Trigger.Request())

    def counter(self, name):
        """Return a /diagnostics counter as int (0 when absent)."""
        try:
            return int(float(self.status.get(name, 0)))
        except ValueError:
            return 0

    def close(self):
        """Shut the client down."""
        self.node.destroy_node()
        import rclpy
        rclpy.shutdown(context=self.context)


def camera(env, width, height, seconds, offset, fps=30.0):
    """Start the camera process (returns the Popen)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--camera', str(width), str(height),
           str(fps), str(seconds), str(offset)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def camera_result(proc, driver):
    """Wait for the camera process while spinning the driver; return its count."""
    while proc.poll() is None:
        driver.spin(0.05)
    out = proc.stdout.read()
    line = [x for x in out.splitlines() if x.startswith('CAMERA')]
    if not line:
        raise RuntimeError('camera process failed: ' + proc.stderr.read()[-2000:])
    return json.loads(line[-1][6:])


def window_stats(driver, t_start, t_end, sent, received, seconds):
    """Predictions and latency inside a window."""
    preds = [(t, p) for t, p in driver.predictions if t_start <= t <= t_end]
    lat = [(t - p['stamp']) * 1000.0 for t, p in preds]
    span = max(t_end - t_start, 1e-9)
    return {'frames_sent': sent, 'frames_received': received,
            'dropped_in_transport': max(0, sent - received) if sent is not None else None,
            'camera_seconds': seconds,
            'frames_received_per_s': received / seconds if seconds else None,
            'predictions': len(preds), 'predictions_per_s': len(preds) / span,
            'latency_stamp_to_prediction_ms': summary(lat),
            'predict_call_ms': summary([p.get('latency_ms', 0) for _, p in preds]),
            'window_seconds': span}


def cpu_fields(node_before, node_after, driver_seconds, cam, wall):
    """Return where the CPU went in a window: node threads by name, driver, camera."""
    by_thread = cpu_delta(node_before, node_after)
    total = sum(by_thread.values())
    return {'cpu_window_seconds': round(wall, 3),
            'node_cpu_seconds': round(total, 3),
            'node_cpu_share_of_one_core': round(total / max(wall, 1e-9), 3),
            'node_cpu_seconds_by_thread': by_thread,
            'driver_cpu_seconds': round(driver_seconds, 3),
            'camera_cpu_seconds': (round(cam['cpu_seconds'], 3)
                                   if cam.get('cpu_seconds') is not None else None)}


def received_series(driver, t_start, t_end, before):
    """Return the node's frames_received since ``before`` over time (from /diagnostics)."""
    return [[round(t - t_start, 2), count - before]
            for t, count in driver.received_series if t_start <= t <= t_end]


def measure_size(env, driver, node_pid, width, height, seconds):
    """Idle and learning windows at one image size."""
    result = {}
    # teach two objects, learn once (so predictions flow)
    for k, name in enumerate(('obj_a', 'obj_b')):
        driver.label(name)
        driver.spin(0.5)
        camera_result(camera(env, width, height, 3, 60 * k), driver)
        driver.label('')
        driver.spin(0.5)
    fut = driver.call_learn()
    driver.spin(until=fut.done, timeout=900)
    result['first_learn'] = json.loads(fut.result().message) if fut.result() else None
    # idle window
    driver.spin(1.0)
    before = driver.counter('frames_received')
    cpu0, driver0 = thread_cpu_seconds(node_pid), time.process_time()
    t0 = time.time()
    cam = camera_result(camera(env, width, height, seconds, 120), driver)
    t1 = time.time()
    cpu1, driver1 = thread_cpu_seconds(node_pid), time.process_time()
    driver.spin(1.5)
    received = driver.counter('frames_received') - before
    result['idle'] = window_stats(driver, t0 + 1.0, t1, cam['sent'], received, cam['seconds'])
    result['idle']['node_frames_dropped'] = driver.counter('frames_dropped')
    result['idle'].update(cpu_fields(cpu0, cpu1, driver1 - driver0, cam, t1 - t0))
    result['idle']['node_frames_received_series'] = received_series(driver, t0, t1 + 1.5,
                                                                    before)
    # learning window: teach 10 s (300 frames), then learn while the camera runs
    driver.label('obj_c')
    driver.spin(0.5)
    camera_result(camera(env, width, height, 10, 180), driver)
    driver.label('')
    driver.spin(0.5)
    before = driver.counter('frames_received')
    dropped_before = driver.counter('frames_dropped')
    cpu0, driver0 = thread_cpu_seconds(node_pid), time.process_time()
    t_camera = time.time()
    proc = camera(env, width, height, max(seconds, 120), 240)
    driver.spin(2.0)
    t_learn = time.time()
    fut = driver.call_learn()
    driver.spin(until=fut.done, timeout=900)
    t_done = time.time()
    cpu1, driver1 = thread_cpu_seconds(node_pid), time.process_time()
    proc.terminate()
    try:
        cam = camera_result(proc, driver)
    except RuntimeError:
        cam = {'sent': None, 'seconds': None}
    driver.spin(1.5)
    received = driver.counter('frames_received') - before
    stats = window_stats(driver, t_learn, t_done, cam['sent'], received, cam['seconds'])
    stats['learn_response'] = json.loads(fut.result().message) if fut.result() else None
    stats['frames_received_total_while_camera_ran'] = received
    stats['node_frames_dropped'] = driver.counter('frames_dropped') - dropped_before
    stats.update(cpu_fields(cpu0, cpu1, driver1 - driver0, {}, t_done - t_camera))
    stats['node_frames_received_series'] = received_series(driver, t_camera, t_done + 1.5,
                                                           before)
    rate = [t for t, _ in driver.predictions if t_learn <= t <= t_done]
    stats['predictions_per_s'] = len(rate) / max(t_done - t_learn, 1e-9)
    result['learning'] = stats
    result['node_rss_bytes'] = rss_bytes(node_pid)
    result['node_peak_rss_bytes'] = peak_rss_bytes(node_pid)
    return result


def main():
    """Measure each image size with a fresh node process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse_common(parser)
    parser.add_argument('--camera', nargs=5, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--seconds', type=float, default=None)
    parser.add_argument('--sizes', default='128x128,640x480')
    parser.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter (repeatable), e.g. upper_precision:=float32')
    parser.add_argument('--executors', default=None,
                        help='comma-separated executors to compare in this run: pool (the '
                             "node's own), rclpy (rclpy's MultiThreadedExecutor); default "
                             'pool,rclpy (pool with --quick)')
    parser.add_argument('--repeats', type=int, default=1,
                        help='runs of every executor and size, interleaved')
    args = parser.parse_args()
    if args.camera:
        w, h, fps, sec, off = args.camera
        camera_main(int(w), int(h), float(fps), float(sec), int(off))
        return
    seconds = args.seconds or (8 if args.quick else 20)
    domain = 150 + os.getpid() % 80
    env = ros_env(domain)
    keys = ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID', 'ROS_LOG_DIR',
            'FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
    os.environ.update({k: env[k] for k in keys})
    executors = (args.executors or ('pool' if args.quick else 'pool,rclpy')).split(',')
    unknown = [e for e in executors if e not in EXECUTORS]
    if unknown:
        parser.error(f'unknown executor(s) {unknown}; choose from {sorted(EXECUTORS)}')
    rec = Recorder('node_throughput', {'threads': args.threads, 'fps': 30,
                                       'idle_seconds': seconds, 'ros_domain_id': domain,
                                       'prediction_rate': 30.0, 'profile': str(PROFILE),
                                       'node_params': args.node_param,
                                       'executors': {e: EXECUTOR_NAMES[e] for e in executors},
                                       'repeats': args.repeats})
    results = {}
    name = args.out or 'node_throughput.json'
    runs = [(rep, executor, size) for rep in range(args.repeats) for executor in executors
            for size in args.sizes.split(',')]
    for rep, executor, size in runs:
        key = size if executor == 'pool' else f'{size} {EXECUTOR_NAMES[executor]}'
        key += f' #{rep + 1}' if args.repeats > 1 else ''
        width, height = (int(v) for v in size.split('x'))
        state = Path(tempfile.mkdtemp(prefix='bench_node_')) / 'state.pt'
        cmd = [sys.executable] + EXECUTORS[executor] + [
            '--ros-args', '--params-file', str(REPO / 'config' / 'params.yaml'),
            '-p', f'state_file:={state}', '-p', f'threads:={args.threads}',
            '-p', 'prediction_rate:=30.0', '-p', 'autosave:=false',
            '-p', 'diagnostics_period:=0.5']
        for extra in args.node_param:
            cmd += ['-p', extra]
        node = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                                stderr=open(state.parent / 'node.log', 'w'))
        driver = Driver(env)
        try:
            ok = driver.spin(until=lambda: driver.learn.service_is_ready() and driver.status,
                             timeout=300)
            if not ok:
                raise RuntimeError('node did not come up; log: '
                                   + (state.parent / 'node.log').read_text()[-2000:])
            results[key] = measure_size(env, driver, node.pid, width, height, seconds)
            results[key]['executor'] = EXECUTOR_NAMES[executor]
            print(key, json.dumps(results[key])[:1500], flush=True)
        except Exception as exc:  # noqa: B902 - record and go on with the next size
            results[key] = {'error': f'{type(exc).__name__}: {exc}'}
            print(key, results[key], flush=True)
        finally:
            driver.close()
            node.terminate()
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
        rec.write(name, results=results, partial=True)
    rec.write(name, results=results, partial=False)


if __name__ == '__main__':
    main()
